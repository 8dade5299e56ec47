"""IMAP4rev1 + IMAP4rev2 (RFC 3501, RFC 9051) with the extensions real clients use.

Hand-written: no maintained Python library serves IMAP (imaplib and imapclient are clients;
Twisted's server is rev1-only, callback-based and lacks CONDSTORE/QRESYNC).  The package
keeps the layers of DESIGN §2 apart: `parser` (bytes → typed `commands`, no I/O),
`session` (state machine, one `cmd_*` per command), `sections`/`sort`/`thread` (pure
renderers), `responses` (wire syntax), and the store underneath.
"""
