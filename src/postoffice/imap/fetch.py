"""FETCH responses (RFC 9051 §6.4.5, §7.5.2; RFC 3516 BINARY; RFC 7162 MODSEQ).

`plan` decides once per command what the store must load; `render` builds one message's
`* n FETCH (...)` from its entry and, when a section was asked for, its raw bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from postoffice.imap import responses as w
from postoffice.imap import sections
from postoffice.imap.commands import FetchAttr, FetchBinarySize, FetchItem, FetchSection, Section
from postoffice.store.mime import Part
from postoffice.store.model import Entry, FetchWhat

_HEADER = Section(text="HEADER")
_TEXT = Section(text="TEXT")
_WHOLE = Section()


class UnknownCte(Exception):
    """BINARY of a part whose Content-Transfer-Encoding we cannot undo (RFC 3516 §4.1)."""


@dataclass(frozen=True, slots=True)
class Plan:
    items: tuple[FetchItem, ...]
    what: FetchWhat
    needs_raw: bool  # some item reads the message bytes
    header_only: bool  # ... but none beyond the top-level header
    sets_seen: bool  # some item is a non-peek body fetch (RFC 9051 §6.4.5)
    modseq: bool  # MODSEQ goes into every response (RFC 7162 §3.1.4.1)


def plan(items: Sequence[FetchItem], uid: bool, condstore: bool) -> Plan:
    names = {item.name for item in items if isinstance(item, FetchAttr)}
    full_items = list(items)
    # RFC 9051 §6.4.8: UID FETCH always reports the UID.
    if uid and "UID" not in names:
        full_items.insert(0, FetchAttr("UID"))
    if condstore and "MODSEQ" not in names:
        full_items.append(FetchAttr("MODSEQ"))
    raw_names = {"RFC822", "RFC822.HEADER", "RFC822.TEXT"}
    needs_raw = bool(names & raw_names) or any(
        isinstance(item, FetchSection | FetchBinarySize) for item in items
    )
    header_only = not names & {"RFC822", "RFC822.TEXT"} and all(
        item.section.part == () and item.section.text.startswith("HEADER") and not item.binary
        for item in items
        if isinstance(item, FetchSection)
    )
    header_only = header_only and not any(isinstance(i, FetchBinarySize) for i in items)
    sets_seen = bool(names & {"RFC822", "RFC822.TEXT"}) or any(
        isinstance(item, FetchSection) and not item.peek for item in items
    )
    what = FetchWhat(
        envelope="ENVELOPE" in names,
        bodystructure=bool(names & {"BODY", "BODYSTRUCTURE"}),
        parts=needs_raw,
    )
    return Plan(
        tuple(full_items),
        what,
        needs_raw,
        header_only,
        sets_seen,
        condstore or "MODSEQ" in names,
    )


def render(
    seq: int,
    entry: Entry,
    raw: bytes | None,
    plan: Plan,
    flags_item: bytes,
    *,
    flags_changed: bool = False,
) -> bytes:
    """One `* seq FETCH (...)` response; `flags_item` is the rendered FLAGS list, added
    unasked when this fetch just set \\Seen (RFC 9051 §6.4.5)."""
    parts: list[bytes] = []
    asked_flags = any(isinstance(i, FetchAttr) and i.name == "FLAGS" for i in plan.items)
    if flags_changed and not asked_flags:
        parts.append(b"FLAGS " + flags_item)
    root = entry.parts if isinstance(entry.parts, Part) else None
    for item in plan.items:
        match item:
            case FetchAttr(name="UID"):
                parts.append(b"UID %d" % entry.uid)
            case FetchAttr(name="FLAGS"):
                parts.append(b"FLAGS " + flags_item)
            case FetchAttr(name="INTERNALDATE"):
                parts.append(b"INTERNALDATE " + w.date_time(entry.internaldate))
            case FetchAttr(name="RFC822.SIZE"):
                parts.append(b"RFC822.SIZE %d" % entry.size)
            case FetchAttr(name="ENVELOPE"):
                parts.append(b"ENVELOPE " + (entry.envelope or b"NIL"))
            case FetchAttr(name="BODY"):
                parts.append(b"BODY " + (entry.body or b"NIL"))
            case FetchAttr(name="BODYSTRUCTURE"):
                parts.append(b"BODYSTRUCTURE " + (entry.bodystructure or b"NIL"))
            case FetchAttr(name="MODSEQ"):
                parts.append(b"MODSEQ (%d)" % entry.modseq)
            case FetchAttr(name="RFC822"):
                parts.append(b"RFC822 " + _data(raw, root, entry, _WHOLE))
            case FetchAttr(name="RFC822.HEADER"):
                parts.append(b"RFC822.HEADER " + _data(raw, root, entry, _HEADER))
            case FetchAttr(name="RFC822.TEXT"):
                parts.append(b"RFC822.TEXT " + _data(raw, root, entry, _TEXT))
            case FetchSection():
                parts.append(_section_item(item, raw, root, entry))
            case FetchBinarySize(part=path):
                size = _binary_size(raw, root, entry, path)
                spec = ".".join(map(str, path)).encode()
                parts.append(b"BINARY.SIZE[%b] %d" % (spec, size or 0))
            case _:
                pass
    return b"* %d FETCH (%b)\r\n" % (seq, b" ".join(parts))


def _data(raw: bytes | None, root: Part | None, entry: Entry, section: Section) -> bytes:
    if raw is None or root is None:
        return b"NIL"
    return _body_literal(sections.section_data(raw, root, entry.prefix_len, section))


def _body_literal(data: bytes | None) -> bytes:
    # A part that does not exist reads as empty, as in Dovecot (imap-msgpart.c); NUL cannot
    # travel in a plain literal (RFC 9051 §4.3), so it becomes 0x80 as Dovecot does.
    return w.literal((data or b"").replace(b"\x00", b"\x80"))


def _section_item(item: FetchSection, raw: bytes | None, root: Part | None, entry: Entry) -> bytes:
    name = b"BINARY" if item.binary else b"BODY"
    spec = item.section.render().encode()
    origin = b"" if item.partial is None else b"<%d>" % item.partial[0]
    head = b"%b[%b]%b " % (name, spec, origin)
    if raw is None or root is None:
        return head + b"NIL"
    if item.binary:
        try:
            data = sections.binary_data(raw, root, entry.prefix_len, item.section.part)
        except sections.UnknownEncoding:
            raise UnknownCte from None
    else:
        data = sections.section_data(raw, root, entry.prefix_len, item.section)
    data = sections.apply_partial(data or b"", item.partial)
    if item.binary and b"\x00" in data:
        return head + b"~{%d}\r\n%b" % (len(data), data)  # RFC 3516 literal8
    return head + _body_literal(data)


def _binary_size(
    raw: bytes | None, root: Part | None, entry: Entry, path: tuple[int, ...]
) -> int | None:
    if raw is None or root is None:
        return None
    try:
        return sections.binary_size(raw, root, entry.prefix_len, path)
    except sections.UnknownEncoding:
        raise UnknownCte from None
