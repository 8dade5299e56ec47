"""The ManageSieve server (RFC 5804): `sieve`, where users upload and pick their Sieve scripts.

Hand-written: no Python library serves ManageSieve (sievelib and managesieve on PyPI are
clients), and the protocol is small.  The layers follow DESIGN §9: `parser.py` (pure: command
segments and literals → a typed command; replies), `session.py` (the state machine, one
`cmd_<verb>` per command, SASL through the shared authenticator) and `handler.py` (the
listener-layer entry).  Scripts live in the store (`store.sieve`); the interpreter that
checks and runs them is `postoffice.filters.sieve`.
"""

from postoffice.managesieve.handler import SIEVE_LISTENERS, SieveHandler

__all__ = ["SIEVE_LISTENERS", "SieveHandler"]
