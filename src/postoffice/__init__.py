"""postoffice: a complete mail service (SMTP, submission, LMTP, IMAP, POP3, filtering, webmail)."""

__version__ = "0.1.0"
