"""Trace header fields written at delivery: Return-Path, Received, Delivered-To.

Every value that came from a client (HELO name, addresses, session data) passes through
`_clean` or `_path` first: nothing a peer sends can end a header line or open a new field.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Final

from postoffice.delivery.model import Origin

# Longest HELO name kept: a domain is at most 255 octets (RFC 5321 §4.5.3.1.2).
_MAX_HELO: Final = 255
_MAX_ADDRESS: Final = 320
_UNSAFE: Final = re.compile(r"[\x00-\x20\x7f()<>;\\\"]")
_COMMENT_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f()\\]")
_PATH_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f<>]")
_FOLD: Final = b"\r\n\t"
_LINES: Final = re.compile(rb"(?<=\r\n)")


def _clean(value: str, limit: int) -> str:
    """A single token: no whitespace, controls, comment or path delimiters."""
    return _UNSAFE.sub("?", value[:limit])


def _path(address: str) -> str:
    """An address for a header: quoted local parts keep their spaces and quotes."""
    return _PATH_UNSAFE.sub("?", address[:_MAX_ADDRESS])


def _comment(text: str) -> str:
    return "(" + _COMMENT_UNSAFE.sub("?", text) + ")"


def _address_literal(ip: str) -> str:
    # RFC 5321 §4.1.3: IPv4 literals are bare, IPv6 ones are tagged "IPv6:".
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return "[" + _clean(ip, 64).replace("[", "?").replace("]", "?") + "]"
    if isinstance(parsed, ipaddress.IPv6Address):
        mapped = parsed.ipv4_mapped
        return f"[{mapped}]" if mapped is not None else f"[IPv6:{parsed.compressed}]"
    return f"[{parsed}]"


def return_path(sender: str) -> bytes:
    """`Return-Path: <sender>` (RFC 5321 §4.4: added at final delivery; `<>` for bounces)."""
    return f"Return-Path: <{_path(sender)}>\r\n".encode()


def delivered_to(address: str) -> bytes:
    """The per-recipient `Delivered-To:` line kept in the entry prefix (DESIGN §3)."""
    return f"Delivered-To: {_path(address)}\r\n".encode()


def received(origin: Origin, hostname: str, recipient: str | None, when: dt.datetime) -> bytes:
    """The `Received:` field for one message (RFC 5321 §4.4 Stamp), folded, CRLF-ended.

    `recipient` goes into the FOR clause; pass it only for a one-recipient message, since
    the field is shared by every copy and must not tell one recipient about the others.
    """
    helo = _clean(origin.helo, _MAX_HELO) or "unknown"
    # RFC 5321 §4.4: From-domain = "FROM" FWS Extended-Domain; the TCP-info is only the
    # address literal, since no reverse DNS lookup is done here.
    source = f"from {helo}"
    if origin.peer_ip:
        source += f" ({_address_literal(origin.peer_ip)})"
    # RFC 3848: ESMTPS / ESMTPSA / LMTP... tell TLS and AUTH in the WITH clause.
    lines = [source, f"by {_clean(hostname, _MAX_HELO)} with {_clean(origin.protocol, 16)}"]
    if origin.tls:
        version, _, cipher = origin.tls.partition(" ")
        lines.append(_comment(f"using {version} with cipher {cipher}" if cipher else version))
    if origin.account_id is not None:
        # RFC 8314 asks submission servers to record the use of TLS and who authenticated.
        user = origin.auth_address or f"account {origin.account_id}"
        lines.append(_comment(f"authenticated user {user}"))
    stamp = f"id {_clean(origin.session_id, 64) or 'unknown'}"
    if recipient is not None:
        stamp += f" for <{_path(recipient)}>"
    lines.append(stamp + ";")
    lines.append(email.utils.format_datetime(when.astimezone(dt.UTC)))
    return b"Received: " + _FOLD.join(line.encode() for line in lines) + b"\r\n"


def _header_end(raw: bytes) -> int:
    """Offset just past the header section's last CRLF (before the empty line)."""
    if raw.startswith(b"\r\n"):
        return 0
    end = raw.find(b"\r\n\r\n")
    return len(raw) if end < 0 else end + 2


def field_values(raw: bytes, name: str) -> list[str]:
    """The unfolded values of every header field called `name` (any case), as text.

    RFC 6532 allows UTF-8 in header fields; other bytes are a defect, read as U+FFFD.
    """
    wanted = name.lower().encode() + b":"
    fields: list[list[bytes]] = []
    collecting = False
    for line in _LINES.split(raw[: _header_end(raw)]):
        if line[:1] in (b" ", b"\t"):
            if collecting:
                fields[-1].append(line.rstrip(b"\r\n"))
            continue
        collecting = line[: len(wanted)].lower() == wanted
        if collecting:
            fields.append([line[len(wanted) :].rstrip(b"\r\n")])
    return [b"".join(parts).decode("utf-8", "replace").strip() for parts in fields]


def strip_return_path(raw: bytes) -> bytes:
    """The message without the Return-Path fields a client put in.

    RFC 5321 §4.4: the final-delivery server MAY remove them before adding its own; a
    Return-Path the sender wrote could otherwise pass for the envelope sender.
    """
    return _strip_fields(raw, (b"return-path:",), lambda name, first_line: name == b"return-path")


def strip_forged_results(raw: bytes, hostname: str) -> bytes:
    """The message without the fields our own filters write, as a sender may forge them:
    Authentication-Results naming our authserv-id (RFC 8601 §5) and X-Spam-*, which users'
    Sieve rules read."""
    ours = hostname.lower().encode()

    def forged(name: bytes, first_line: bytes) -> bool:
        if name.startswith(b"x-spam-"):
            return True
        if name != b"authentication-results":
            return False
        value = first_line.split(b":", 1)[1].strip().lower()
        return value.split(b";", 1)[0].split()[:1] == [ours]

    return _strip_fields(raw, (b"authentication-results:", b"x-spam-"), forged)


def _strip_fields(
    raw: bytes, markers: tuple[bytes, ...], drop: Callable[[bytes, bytes], bool]
) -> bytes:
    """`raw` without the header fields `drop(lower-cased name, first line)` picks; `markers`
    are substrings one of which such a field has, to skip the work for most messages."""
    end = _header_end(raw)
    head = raw[:end].lower()
    if not any(marker in head for marker in markers):
        return raw
    kept: list[bytes] = []
    dropping = False
    for line in _LINES.split(raw[:end]):
        # A folded continuation line belongs to the field above it.
        if line[:1] not in (b" ", b"\t"):
            dropping = drop(line.split(b":", 1)[0].strip().lower(), line)
        if not dropping:
            kept.append(line)
    return b"".join(kept) + raw[end:]


_FIELD_NAME: Final = re.compile(r"[!-9;-~]{1,76}")
_CONTROLS: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def added_fields(fields: Sequence[tuple[str, str]]) -> bytes:
    """Header fields the filters add (Authentication-Results, X-Spam-*, ...), CRLF-ended.

    A stage's value may hold line breaks meant as folding; any other control character, or
    a break not followed by whitespace, must not reach the stored message.
    """
    out = []
    for name, value in fields:
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid header field name {name!r}")
        lines = [_CONTROLS.sub("?", line.strip()) for line in value.splitlines()]
        out.append(f"{name}: " + "\r\n\t".join(line for line in lines if line) + "\r\n")
    return "".join(out).encode()


def delivered_here(raw: bytes, address: str) -> bool:
    """Whether the message already carries `Delivered-To: address`: it has been through this
    mailbox before, so sending it on again would loop."""
    wanted = f"delivered-to: {address}".lower().encode()
    head = raw[: _header_end(raw)].lower()
    return any(line.strip() == wanted for line in head.split(b"\r\n"))
