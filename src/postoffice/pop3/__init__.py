"""The POP3 server (RFC 1939 with RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH): `pop3` and
`pop3s` (implicit TLS).

Hand-written: there is no maintained Python POP3 server library (poplib is a client, and
Twisted's `twisted.mail.pop3` is callback-based, knows neither RFC 2449 response codes nor
SASL through our authenticator).  The layers follow DESIGN §9: `parser.py` (pure: a command
line → a typed command), `responses.py` (pure: dot-stuffing, TOP, capability lines),
`session.py` (the state machine, one `cmd_<verb>` per command; the maildrop lock is
`postoffice.locks`) and `handler.py` (the listener-layer entry).
"""

from postoffice.pop3.handler import POP3_LISTENERS, Pop3Handler

__all__ = ["POP3_LISTENERS", "Pop3Handler"]
