"""What goes on the wire for a POP3 answer; pure.

Multi-line answers (RFC 1939 §3) are dot-stuffed and end in `.` on a line of its own.
`dot_stuffed` works chunk by chunk, so a large message is streamed, never copied whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

CHUNK: Final = 64 * 1024
END: Final = b".\r\n"


def ok(text: str) -> bytes:
    return f"+OK {text}\r\n".encode()


def err(text: str, code: str | None = None) -> bytes:
    # RFC 2449 §8: the response code comes first, in square brackets.
    bracket = f"[{code}] " if code else ""
    return f"-ERR {bracket}{text}\r\n".encode()


def multiline(lines: Iterable[str]) -> bytes:
    """Short generated lines (CAPA, LIST, UIDL), dot-stuffed, with the terminating `.`."""
    return b"".join(_stuff_line(line.encode()) + b"\r\n" for line in lines) + END


def _stuff_line(line: bytes) -> bytes:
    return b"." + line if line.startswith(b".") else line


def dot_stuffed(data: bytes | memoryview, chunk: int = CHUNK) -> Iterator[bytes]:
    """`data` as the body of a multi-line answer, in pieces of about `chunk` bytes: every
    line starting with `.` gets another one (RFC 1939 §3), a final CRLF is added when the
    message lacks one, and the last piece is the terminating `.` line."""
    view = memoryview(data)
    at_line_start = True
    for start in range(0, len(view), chunk):
        piece = bytes(view[start : start + chunk])
        stuffed = piece.replace(b"\n.", b"\n..")
        if at_line_start and stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        at_line_start = piece.endswith(b"\n")
        yield stuffed
    yield END if at_line_start else b"\r\n" + END


def top(message: bytes, lines: int) -> bytes:
    """The header, the blank line and the first `lines` lines of the body (RFC 1939 §7 TOP)."""
    end = _header_end(message)
    if end < 0:
        return message
    position = end
    for _ in range(lines):
        newline = message.find(b"\n", position)
        if newline < 0:
            return message
        position = newline + 1
    return message[:position]


def _header_end(message: bytes) -> int:
    """Offset just past the blank line that ends the header; -1 when there is none."""
    for blank in (b"\r\n", b"\n"):
        if message.startswith(blank):
            return len(blank)
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := message.find(sep)) >= 0]
    return min(ends, default=-1)
