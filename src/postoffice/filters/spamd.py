"""The "spamd" message stage: asks rspamd (`[junk] rspamd_url`) or SpamAssassin's spamd
(`[junk] spamd`) about mail from the world; rspamd when both are set.

Hand-written clients, because each is one request and one reply: rspamd's `POST /checkv2`
is plain HTTP/1.1 with the message as the body and the envelope in request headers, and a
JSON answer; spamd speaks SPAMC/1.5, a few header lines each way over TCP.  An HTTP client
library would be a runtime dependency for forty lines, and there is no maintained spamc one.

The scanner's own verdict is kept: over its required score the message is junk (every local
copy goes to Junk); rspamd's "reject" refuses it, "soft reject" asks the sender to retry.
Its score becomes `findings.spam_score` on the junk classifier's 0..1 scale: a logistic
curve centred on the scanner's required score (at it 0.5, four points above it 0.98).
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from postoffice.config import TcpAddress, parse_listen_address
from postoffice.context import Context
from postoffice.delivery.model import Outcome, Verdict
from postoffice.filters.api import (
    Findings,
    Message,
    OnFailure,
    StageUnavailable,
    on_failure,
    rejected,
)

MAX_REPLY: Final = 1 << 20  # a scanner's answer is a few kilobytes; more is not one
_SYMBOLS_SHOWN: Final = 12


class ScannerError(Exception):
    """The scanner answered something we cannot use."""


@dataclass(frozen=True, slots=True)
class ScanResult:
    scanner: str  # "rspamd" or "spamd"
    score: float
    required: float
    spam: bool
    action: str  # rspamd's action ("no action", "add header", "reject", ...); spamd: ""
    symbols: tuple[str, ...]


Scanner = Callable[[Message], Awaitable[ScanResult]]


def probability(result: ScanResult) -> float:
    """The scanner's score on a 0..1 scale, 0.5 at its required score."""
    return 1.0 / (1.0 + math.exp(min(result.required - result.score, 700.0)))


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """Everything the scanner sends until it closes the connection, as both do."""
    reply = bytearray()
    while chunk := await reader.read(1 << 16):
        reply += chunk
        if len(reply) > MAX_REPLY:
            raise ScannerError("the scanner's answer is too large")
    return bytes(reply)


# -- rspamd -------------------------------------------------------------------------------------


def _dechunk(body: bytes) -> bytes:
    """RFC 9112 §7.1 chunked transfer coding (no trailers are expected)."""
    out = bytearray()
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            raise ScannerError("truncated chunked body")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        body = rest[size + 2 :]


def parse_http_response(raw: bytes) -> tuple[int, bytes]:
    """Status code and body of a complete HTTP/1.1 response (connection closed after it)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ScannerError("incomplete HTTP response")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ScannerError(f"not an HTTP response: {status_line[:80]!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return int(parts[1]), body


def parse_rspamd(body: bytes) -> ScanResult:
    try:
        answer = json.loads(body)
        score = float(answer["score"])
        required = float(answer["required_score"])
        action = str(answer["action"])
    except (ValueError, KeyError, TypeError) as e:
        raise ScannerError(f"unexpected rspamd answer: {e}") from None
    symbols = answer.get("symbols")
    return ScanResult(
        scanner="rspamd",
        score=score,
        required=required,
        spam=action in ("add header", "rewrite subject", "reject"),
        action=action,
        symbols=tuple(sorted(symbols)) if isinstance(symbols, dict) else (),
    )


def rspamd_request(url: urllib.parse.SplitResult, message: Message) -> bytes:
    envelope = message.envelope
    # rspamd's request headers carry what the message alone does not say.
    fields = [
        ("Host", url.netloc),
        ("Content-Length", str(len(message.raw))),
        ("Connection", "close"),
        ("From", envelope.sender),
        *(("Rcpt", r.address) for r in envelope.recipients),
        ("Helo", message.origin.helo),
        ("Queue-Id", message.origin.session_id),
    ]
    if message.origin.peer_ip:
        fields.append(("IP", message.origin.peer_ip))
    path = url.path.rstrip("/") + "/checkv2"
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    return head.encode() + message.raw


def rspamd_scanner(base_url: str) -> Scanner:
    url = urllib.parse.urlsplit(base_url)
    tls = ssl.create_default_context() if url.scheme == "https" else None
    port = url.port or (443 if tls else 80)

    async def scan(message: Message) -> ScanResult:
        reader, writer = await asyncio.open_connection(url.hostname, port, ssl=tls)
        try:
            writer.write(rspamd_request(url, message))
            await writer.drain()
            status, body = parse_http_response(await read_reply(reader))
        finally:
            writer.close()
        if status != 200:
            raise ScannerError(f"rspamd answered HTTP {status}")
        return parse_rspamd(body)

    return scan


# -- spamd --------------------------------------------------------------------------------------


def spamc_request(message: Message) -> bytes:
    # SPAMC/1.5 (SpamAssassin's spamd/PROTOCOL): SYMBOLS answers the verdict and rule names.
    return b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(message.raw) + message.raw


def parse_spamd(raw: bytes) -> ScanResult:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("SPAMD/"):
        raise ScannerError(f"not a spamd response: {status_line[:80]!r}")
    if parts[1] != "0":
        raise ScannerError(f"spamd error: {status_line[:80]}")
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "spam":
            # "Spam: True ; 15.2 / 5.0"
            verdict, _, scores = value.partition(";")
            score, _, required = scores.partition("/")
            try:
                return ScanResult(
                    scanner="spamd",
                    score=float(score),
                    required=float(required),
                    spam=verdict.strip().lower() in ("true", "yes"),
                    action="",
                    symbols=tuple(s for s in body.decode("latin-1").strip().split(",") if s),
                )
            except ValueError:
                break
    raise ScannerError("spamd answered without a usable Spam header")


def spamd_scanner(host: str, port: int) -> Scanner:
    async def scan(message: Message) -> ScanResult:
        reader, writer = await asyncio.open_connection(host or "127.0.0.1", port)
        try:
            writer.write(spamc_request(message))
            await writer.drain()
            return parse_spamd(await read_reply(reader))
        finally:
            writer.close()

    return scan


# -- the stage ----------------------------------------------------------------------------------


def report(result: ScanResult) -> str:
    symbols = ",".join(s for s in result.symbols[:_SYMBOLS_SHOWN] if s.isascii())
    action = f" action={result.action.replace(' ', '_')}" if result.action else ""
    return (
        f"{result.scanner} score={result.score:.2f} required={result.required:.2f}{action}"
        f" symbols={symbols}"
    )


class SpamdFilter:
    name = "spamd"

    def __init__(self, scanner: Scanner, timeout: float, on_failure: OnFailure) -> None:
        self.scanner = scanner
        self.timeout = timeout
        self.on_failure = on_failure

    async def scan(self, message: Message, findings: Findings) -> None:
        if not message.from_world:
            return
        try:
            async with asyncio.timeout(self.timeout):
                result = await self.scanner(message)
        except (OSError, TimeoutError, ScannerError, ValueError) as e:
            raise StageUnavailable(f"spam scanner: {e!r}") from e
        findings.spam_score = probability(result)
        findings.results[self.name] = "spam" if result.spam else "ham"
        findings.add_header("X-Spam-Report", report(result))
        if result.spam:
            findings.junk = True
        if result.action == "reject":
            findings.refuse(rejected("message refused as spam"))
        elif result.action == "soft reject":
            findings.refuse(Verdict(Outcome.TEMPORARY_FAILURE, "try again later"))


def build(ctx: Context) -> SpamdFilter | None:
    config = ctx.config.junk
    if not config.enabled:
        return None
    if config.rspamd_url:
        scanner = rspamd_scanner(config.rspamd_url)
    elif config.spamd:
        address = parse_listen_address(config.spamd, allow_unix=False)
        assert isinstance(address, TcpAddress)  # config.py checked the form
        scanner = spamd_scanner(address.host, address.port)
    else:
        return None
    return SpamdFilter(scanner, config.timeout_seconds, on_failure(config.on_failure))
