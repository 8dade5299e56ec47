"""Message content after DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030): pure, no I/O.

`DataReader` is fed whatever the socket delivers and says when the message has ended.  Only
`<CRLF>.<CRLF>` ends it.  SMTP smuggling hides a second message behind an end-of-data that
some other server would honour (`<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CR><LF>`,
`<CR><LF>.<LF>`, ...); none of those ends a message here, and any message holding a bare
CR or a bare LF is refused with 550 5.6.0.  We refuse rather than normalise: RFC 5321 §2.3.8
forbids bare CR and LF in SMTP, real senders do not produce them, and a refused message
can never reach a mailbox or the outbound queue in a form another server might split.

The reader searches the buffer with `bytes.find` (no per-line loop), counts the size as it
goes and, once the message is over the size limit, drops what it holds but keeps reading to
the real end so the session stays in step with the client; the refusal comes then.

`ChunkCollector` gathers BDAT chunks; there is no dot-stuffing or end marker, but the same
content checks apply, except for BODY=BINARYMIME where any octet is legal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from postoffice.smtp.replies import (
    SMTP_550_BARE_NEWLINE,
    SMTP_550_LINE_TOO_LONG,
    SMTP_550_NUL,
    SMTP_552_TOO_BIG,
    Reply,
)

END_OF_DATA: Final = b"\r\n.\r\n"  # RFC 5321 §4.1.1.4
_STUFFED: Final = b"\r\n."  # RFC 5321 §4.5.2: a leading dot is doubled on the wire
# RFC 5321 §4.5.3.1.6 and RFC 5322 §2.1.1: a text line is at most 998 octets plus CRLF.
TEXT_LINE_MAX: Final = 998


@dataclass(frozen=True, slots=True)
class Received:
    """A message read to its end: `message` is valid only when `refusal` is None."""

    message: bytes
    refusal: Reply | None
    size: int  # octets of content received (dot-stuffing undone)


def check_content(message: bytes, *, long_lines_ok: bool) -> Reply | None:
    """The reason to refuse a text message (NUL, bare CR/LF, an overlong line), else None."""
    # RFC 5321 §4.1.1.4 / RFC 6152: NUL is not allowed in 7bit or 8bitMIME content.
    if b"\0" in message:
        return SMTP_550_NUL
    crlf = message.count(b"\r\n")
    # RFC 5321 §2.3.8: CR and LF appear only together, as CRLF.
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        return SMTP_550_BARE_NEWLINE
    # Every line end is a CRLF now, so splitting on it yields the exact line lengths.
    if (
        not long_lines_ok
        and len(message) > TEXT_LINE_MAX
        and max(map(len, message.split(b"\r\n"))) > TEXT_LINE_MAX
    ):
        return SMTP_550_LINE_TOO_LONG
    return None


class DataReader:
    """The content after DATA's 354, fed as it arrives."""

    def __init__(self, max_size: int, *, long_lines_ok: bool) -> None:
        self._max_size = max_size
        self._long_lines_ok = long_lines_ok
        # Starts with the CRLF that ended the DATA command: then a first line of "." or a
        # first line with a stuffed dot looks like any other, and the end is always
        # END_OF_DATA.
        self._buf = bytearray(b"\r\n")
        self._dropped = -2  # buffer index + _dropped = offset in the content
        self._dots_counted_to = 0
        self._dots = 0  # stuffed dots seen so far, for the running size
        self._too_big = False

    def feed(self, chunk: bytes | bytearray) -> tuple[Received, bytes] | None:
        """Take more input; once the end of data is in it, the message and the input that
        follows it (pipelined commands), else None."""
        buf = self._buf
        # The end marker may straddle the old end of the buffer.
        search_from = max(0, len(buf) - len(END_OF_DATA) + 1)
        buf += chunk
        end = buf.find(END_OF_DATA, search_from)
        if end >= 0:
            rest = bytes(buf[end + len(END_OF_DATA) :])
            return self._finish(end), rest
        if not self._too_big:
            # RFC 1870 §5: the size counts the message, not its dot-stuffing.
            self._dots += buf.count(_STUFFED, self._dots_counted_to)
            self._dots_counted_to = len(buf) - len(_STUFFED) + 1
            if len(buf) + self._dropped - self._dots > self._max_size:
                self._too_big = True
        if self._too_big:
            # Keep only what may begin the end marker; the size is all we still need.
            keep = len(END_OF_DATA) - 1
            self._dropped += len(buf) - keep
            del buf[:-keep]
        return None

    def _finish(self, end: int) -> Received:
        # The CRLF in front of the final "." ends the message's last line.
        content_end = end + 2
        if self._too_big:
            size = content_end + self._dropped
            return Received(b"", SMTP_552_TOO_BIG, size)
        message = bytes(self._buf[:content_end]).replace(_STUFFED, b"\r\n")[2:]
        self._buf = bytearray()
        if len(message) > self._max_size:
            return Received(b"", SMTP_552_TOO_BIG, len(message))
        refusal = check_content(message, long_lines_ok=self._long_lines_ok)
        return Received(b"" if refusal else message, refusal, len(message))


class ChunkCollector:
    """The chunks of one BDAT transaction (RFC 3030), up to the size limit."""

    def __init__(self, max_size: int, *, long_lines_ok: bool, binary: bool) -> None:
        self._max_size = max_size
        self._long_lines_ok = long_lines_ok
        self._binary = binary
        self._parts: list[bytes] = []
        self.size = 0

    @property
    def too_big(self) -> bool:
        return self.size > self._max_size

    def add(self, data: bytes) -> None:
        """Take part of a chunk; past the size limit it is only counted."""
        self.size += len(data)
        if self.too_big:
            self._parts.clear()
        else:
            self._parts.append(data)

    def finish(self) -> Received:
        """The message after BDAT ... LAST."""
        if self.too_big:
            return Received(b"", SMTP_552_TOO_BIG, self.size)
        message = b"".join(self._parts)
        self._parts.clear()
        # RFC 3030 §3: BINARYMIME content is arbitrary octets, not lines.
        refusal = (
            None if self._binary else check_content(message, long_lines_ok=self._long_lines_ok)
        )
        return Received(b"" if refusal else message, refusal, len(message))
