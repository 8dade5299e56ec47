"""SORT (RFC 5256 §3) and SORT=DISPLAY (RFC 5957) over the keys the store keeps per message.

Hand-written because no library knows these keys: the store computes them once, at delivery
(`store.mime`), and ordering them is a chain of stable sorts.  The i;unicode-casemap
collation (RFC 5051) that RFC 5256 §1 requires through I18NLEVEL=1 is here too, since
THREAD compares base subjects with it as well.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable, Sequence

from postoffice.imap.commands import SortCriterion
from postoffice.store.model import SortFields

__all__ = ["casemap", "sent_time", "sort_uids"]


# A memo of a pure function: the same few hundred characters recur across a mailbox.
@functools.lru_cache(maxsize=4096)
def _casemap_char(char: str) -> str:
    if "\uac00" <= char <= "\ud7a3":
        # Hangul syllables decompose by algorithm, not by UnicodeData.txt, which RFC 5051 uses
        return char
    # RFC 5051 §2: the titlecase mapping (one character, the UnicodeData.txt kind), then the
    # decomposition of any type, repeated on the result until nothing changes
    title = char.title()
    decomposed = unicodedata.normalize("NFKD", title if len(title) == 1 else char)
    if decomposed == char:
        return char
    return "".join(_casemap_char(c) for c in decomposed)


def casemap(text: str) -> str:
    """`text` as i;unicode-casemap compares it: equal and ordered as the collation says."""
    if text.isascii():
        # titlecase of ASCII is uppercase: "[" and "_" sort after letters, as in Dovecot
        return text.upper()
    return "".join(_casemap_char(c) for c in text)


def sent_time(fields: SortFields) -> float:
    """RFC 5256 §2.2 / §3 DATE: the Date: header, else the INTERNALDATE, as a UTC instant."""
    date = fields.sent_date if fields.sent_date is not None else fields.internaldate
    return date.timestamp()


_KEYS: dict[str, Callable[[SortFields], str | float | int]] = {
    "ARRIVAL": lambda f: f.internaldate.timestamp(),
    "CC": lambda f: casemap(f.sort_cc),
    "DATE": sent_time,
    "FROM": lambda f: casemap(f.sort_from),
    "SIZE": lambda f: f.size,
    "SUBJECT": lambda f: casemap(f.base_subject),
    "TO": lambda f: casemap(f.sort_to),
    "DISPLAYFROM": lambda f: casemap(f.display_from),
    "DISPLAYTO": lambda f: casemap(f.display_to),
}


def sort_uids(fields: Sequence[SortFields], criteria: Sequence[SortCriterion]) -> list[int]:
    """The UIDs of `fields` ordered by `criteria`, first criterion most significant."""
    # RFC 5256 §3: messages equal under every criterion stay in sequence (= UID) order;
    # sorting by the least significant criterion first and relying on stability gets that,
    # and REVERSE turns one criterion round without turning the ties round.
    ordered = sorted(fields, key=lambda f: f.uid)
    for criterion in reversed(criteria):
        ordered.sort(key=_KEYS[criterion.key], reverse=criterion.reverse)
    return [f.uid for f in ordered]
