"""The SMTP server: the MX (`smtp`), `submission`, `submissions` and `lmtp` listeners.

Hand-written rather than built on aiosmtpd, which lacks CHUNKING/BDAT (RFC 3030), DSN
parameters (RFC 3461) and enhanced status codes (RFC 2034), and answers with bare strings
where we want typed, named replies.  The layers follow DESIGN §9: `parser.py` (pure: command
lines → typed arguments), `data.py` (pure: message content, end of data, smuggling
defences), `session.py` (the state machine, one `cmd_<verb>` per command), `replies.py`
(every reply, named, serialised in one place) and `handler.py` (the listener-layer entry).
Delivery itself (routing, trace headers, the store, the queue) is `postoffice.delivery`.
"""

from postoffice.smtp.handler import SMTP_LISTENERS, SmtpHandler, smtp_handler

__all__ = ["SMTP_LISTENERS", "SmtpHandler", "smtp_handler"]
