"""What the junk classifier looks at in a message: its tokens, and its training identity.

Pure functions over the raw bytes.  Header tokens carry the header's name as a prefix
("subject:free", "from:example.com") because the same word means something else in a
Subject than in a body; body words come from text/plain and text/html parts (tags dropped,
script and style skipped); every URL, in either kind of part, gives its host ("url:host").
Tokens are lower-cased, 3 to 40 characters, each counted once, at most `MAX_TOKENS` per message
so a huge message costs no more than a normal one.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import email.utils
import hashlib
import html.parser
import itertools
import re
from collections.abc import Iterable, Iterator
from email.header import decode_header, make_header
from typing import Final

MAX_TOKENS: Final = 1500
MIN_LENGTH: Final = 3
MAX_LENGTH: Final = 40
# The text of one part looked at; spam puts its message first.
MAX_PART_CHARS: Final = 100_000

_WORD = re.compile(r"[^\W_][\w$€£%'.-]*[\w$€£%]|[^\W_]")
_URL = re.compile(r"\bhttps?://([^\s/?#\"'<>]+)", re.IGNORECASE)
_DOMAIN = re.compile(r"\b((?:[a-z0-9-]+\.)+[a-z]{2,})\b")
_RECEIVED_FROM = re.compile(r"^\s*from\s+(\S+)(?:\s+\(([^)]*)\))?", re.IGNORECASE)


def _decoded(value: str) -> str:
    """An RFC 2047 encoded header value as text (undecodable parts kept as they are)."""
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, UnicodeError, ValueError):
        return value


def _words(text: str, prefix: str = "") -> Iterator[str]:
    for word in _WORD.findall(text.lower()):
        if MIN_LENGTH <= len(word) <= MAX_LENGTH:
            yield prefix + word


def _hosts(text: str) -> Iterator[str]:
    for match in _URL.finditer(text):
        host = match.group(1).rsplit("@", 1)[-1].split(":", 1)[0].lower().rstrip(".")
        if MIN_LENGTH <= len(host) <= MAX_LENGTH:
            yield "url:" + host


def _address_tokens(name: str, values: Iterable[str]) -> Iterator[str]:
    for display, address in email.utils.getaddresses([_decoded(v) for v in values]):
        yield from _words(display, f"{name}:")
        address = address.lower()
        if "@" in address:
            local, domain = address.rsplit("@", 1)
            yield f"{name}:{domain}"
            yield from _words(local, f"{name}-local:")


def header_tokens(message: email.message.Message) -> Iterator[str]:
    yield from _address_tokens("from", message.get_all("From", []))
    yield from _address_tokens("reply-to", message.get_all("Reply-To", []))
    yield from _address_tokens("to", message.get_all("To", []))
    for subject in message.get_all("Subject", []):
        yield from _words(_decoded(str(subject)), "subject:")
    for received in message.get_all("Received", []):
        # "from HELO (rDNS [IP])": the relays a message came through.
        found = _RECEIVED_FROM.match(str(received))
        if found is not None:
            for domain in _DOMAIN.findall(" ".join(filter(None, found.groups())).lower()):
                yield "received:" + domain


class _HtmlText(html.parser.HTMLParser):
    """The visible text of an HTML part, and the hosts its links and images point at."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.hosts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._hidden += 1
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.hosts.extend(_hosts(value))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        text = payload.decode(charset, errors="replace")
    except LookupError:
        text = payload.decode("latin-1")
    return text[:MAX_PART_CHARS]


def body_tokens(message: email.message.Message) -> Iterator[str]:
    for part in message.walk():
        kind = part.get_content_type()
        if part.is_multipart():
            continue
        yield "type:" + kind
        if kind == "text/plain":
            text = _part_text(part)
            yield from _hosts(text)
            yield from _words(text)
        elif kind == "text/html":
            parser = _HtmlText()
            parser.feed(_part_text(part))
            parser.close()
            yield from parser.hosts
            text = " ".join(parser.text)
            yield from _hosts(text)
            yield from _words(text)
        elif part.get_filename():
            yield "attachment:" + kind


def parse(raw: bytes) -> email.message.Message:
    return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)


def tokenize(raw: bytes) -> list[str]:
    """The message's distinct tokens, headers first, at most MAX_TOKENS."""
    message = parse(raw)
    seen: dict[str, None] = {}
    for token in itertools.chain(header_tokens(message), body_tokens(message)):
        seen.setdefault(token)
        if len(seen) >= MAX_TOKENS:
            break
    return list(seen)


def digest(raw: bytes) -> bytes:
    """What identifies a message for training: its Message-ID (the same in every mailbox and
    whatever headers we prepended), else its whole content."""
    message_id = parse_headers(raw).get("Message-ID")
    if message_id is not None and str(message_id).strip():
        return hashlib.sha256(b"mid:" + str(message_id).strip().encode()).digest()
    return hashlib.sha256(raw).digest()


def parse_headers(raw: bytes) -> email.message.Message:
    return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
