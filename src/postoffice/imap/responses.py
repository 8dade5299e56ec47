"""IMAP response syntax (RFC 9051 §7, §9): strings, lists, sets and flags as they go out."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable

from postoffice.imap import utf7
from postoffice.store.model import FLAG_NAMES, Flag

_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}


def quoted(value: str | bytes) -> bytes:
    """A quoted string, or a literal when the text cannot be quoted (CR, LF, NUL, 8-bit)."""
    data = value.encode() if isinstance(value, str) else value
    if any(b in (0, 10, 13) or b > 0x7F for b in data):
        return literal(data)
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n%b" % (len(data), data)


def nstring(value: str | bytes | None) -> bytes:
    return b"NIL" if value is None else quoted(value)


def astring(value: str) -> bytes:
    """An atom when it is one, else a quoted string (mailbox names, LIST attributes)."""
    data = value.encode()
    if data and not any(b in _ATOM_SPECIALS or b > 0x7F for b in data):
        return data
    return quoted(data)


def mailbox(name: str, utf8: bool) -> bytes:
    """A mailbox name on the wire: modified UTF-7 unless the client enabled UTF8=ACCEPT."""
    return astring(name if utf8 else utf7.encode(name))


# A mailbox has few distinct flag combinations; FETCH FLAGS of 100,000 messages renders each once.
@functools.lru_cache(maxsize=4096)
def flags(system: Flag, keywords: frozenset[str], recent: bool = False) -> bytes:
    names = [name for flag, name in FLAG_NAMES.items() if system & flag]
    if recent:
        names.append("\\Recent")
    names.extend(sorted(keywords))
    return b"(" + " ".join(names).encode() + b")"


def sequence_set(numbers: Iterable[int]) -> bytes:
    """Numbers as compact ascending ranges: 1:3,7,9:10 (ESEARCH ALL, VANISHED)."""
    return ordered_set(sorted(set(numbers)))


def ordered_set(numbers: Iterable[int]) -> bytes:
    """Numbers in the given order with runs compressed (COPYUID pairs keep their order)."""
    parts: list[str] = []
    run: list[int] = []
    for n in [*numbers, -2]:
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}:{run[-1]}")
        run = [n]
    return ",".join(parts).encode()


_MONTHS = (
    b"Jan",
    b"Feb",
    b"Mar",
    b"Apr",
    b"May",
    b"Jun",
    b"Jul",
    b"Aug",
    b"Sep",
    b"Oct",
    b"Nov",
    b"Dec",
)


@functools.lru_cache(maxsize=64)
def _zone(offset: dt.timedelta | None) -> bytes:
    minutes = int(offset.total_seconds()) // 60 if offset else 0
    sign = b"+" if minutes >= 0 else b"-"
    return b"%b%02d%02d" % (sign, abs(minutes) // 60, abs(minutes) % 60)


def date_time(value: dt.datetime) -> bytes:
    """INTERNALDATE: "17-Jul-1996 02:44:25 -0700" in the zone it was given in (once per
    message in a big FETCH, hence bytes formatting and the cached zone)."""
    return b'"%2d-%b-%04d %02d:%02d:%02d %b"' % (
        value.day,
        _MONTHS[value.month - 1],
        value.year,
        value.hour,
        value.minute,
        value.second,
        _zone(value.utcoffset()),
    )
