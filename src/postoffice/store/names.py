"""Mailbox names: validation, INBOX's case-insensitivity and LIST patterns (pure).

Names are Unicode with "/" as the hierarchy separator; the IMAP layer converts to and from
modified UTF-7.  RFC 9051 §5.1.
"""

from __future__ import annotations

import re

from postoffice.store.model import HIERARCHY_SEPARATOR, InvalidName

MAX_NAME_LENGTH = 512
MAX_DEPTH = 32


def normalize_mailbox_name(name: str) -> str:
    """The stored form of a client-given name, or InvalidName with a reason a user can read."""
    if not name:
        raise InvalidName("mailbox name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"mailbox name longer than {MAX_NAME_LENGTH} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise InvalidName("mailbox name contains control characters")
    if "*" in name or "%" in name:
        # RFC 9051 §5.1: the LIST wildcards would make such a name impossible to list alone.
        raise InvalidName("mailbox name contains a wildcard (* or %)")
    components = name.split(HIERARCHY_SEPARATOR)
    if any(not part for part in components):
        raise InvalidName("mailbox name has an empty level (leading, trailing or double /)")
    if len(components) > MAX_DEPTH:
        raise InvalidName(f"mailbox name is nested deeper than {MAX_DEPTH} levels")
    # RFC 9051 §5.1: INBOX is case-insensitive, also as the first level of a child's name.
    if components[0].upper() == "INBOX":
        components[0] = "INBOX"
    return HIERARCHY_SEPARATOR.join(components)


def is_inbox(name: str) -> bool:
    return name.upper() == "INBOX"


def compile_list_pattern(reference: str, pattern: str) -> re.Pattern[str]:
    """RFC 9051 §6.3.9: "*" matches anything, "%" anything but the separator."""
    canonical = reference + pattern
    first, sep, rest = canonical.partition(HIERARCHY_SEPARATOR)
    if first.upper() == "INBOX":
        canonical = "INBOX" + sep + rest
    regex = []
    for ch in canonical:
        if ch == "*":
            regex.append(".*")
        elif ch == "%":
            regex.append(f"[^{re.escape(HIERARCHY_SEPARATOR)}]*")
        else:
            regex.append(re.escape(ch))
    return re.compile("".join(regex), re.DOTALL)
