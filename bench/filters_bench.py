"""What the inbound filters cost: ms per message through the filter chain, and SMTP ingest
msgs/s with the default filters on and off.

    .venv/bin/python bench/filters_bench.py [--quick] [--json FILE]

In-process part: the real `Delivery` on a fresh store with one account whose Bayes classifier
is trained on the test corpus (tests/data/junk), an active Sieve script of a few rules, and a
DNS server on loopback publishing SPF, DKIM and DMARC records for the sender's domain; every
message is DKIM-signed.  It times `deliver` one message at a time with the whole chain
(SPF, DKIM, DMARC, ARC, junk, Sieve; clamd is left out: its cost is clamd's) and with none.
SMTP part: `postoffice serve` as installed (default config: sender checks, junk, Sieve on; DNS
confined to loopback) against the same with those stages turned off, 16 connections of 4 KB
messages.  Numbers only, no pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import serving
import smtp_bench
from outbound_helpers import DnsServer, txt_value
from postoffice.auth.throttle import LoginThrottle
from postoffice.config import Config, QueueConfig, ServerConfig
from postoffice.context import Context, SystemClock, throttle_config
from postoffice.delivery.model import Envelope, Origin, Recipient
from postoffice.delivery.pipeline import Delivery
from postoffice.filters.chain import FilterChain
from postoffice.filters.junk.training import train_messages
from postoffice.log import get_logger
from postoffice.queue.dkim import find_key, generate_key
from postoffice.store import open_store
from postoffice.store.model import AppendTarget

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "junk"
USER = "user@bench.test"
SENDER_DOMAIN = "sender.test"
CLIENT_IP = "192.0.2.25"
SIEVE = """require ["fileinto", "imap4flags", "envelope", "subaddress"];
if header :contains "List-Id" "announce" { fileinto "Lists"; stop; }
if address :is :domain "from" "boss.test" { addflag "\\\\Flagged"; }
if envelope :detail "to" "shop" { fileinto "Shopping"; }
if header :contains "X-Spam-Status" "Yes" { fileinto "Junk"; }
"""


@dataclass
class Result:
    name: str
    value: float
    unit: str


def bench_message(n: int) -> bytes:
    head = (
        f"From: Sender <news@{SENDER_DOMAIN}>\r\nTo: <{USER}>\r\n"
        f"Subject: quarterly planning notes {n}\r\nDate: Tue, 01 Dec 2026 09:00:00 +0000\r\n"
        f"Message-ID: <{n}.{time.time_ns()}@{SENDER_DOMAIN}>\r\n\r\n"
    )
    return (head + smtp_bench.LINE.decode() * 40).encode()


def set_setting(data: Path, section: str, key: str, value: str) -> None:
    """Set `key = value` (TOML text) in [section] of DATA/postoffice.toml."""
    config = data / "postoffice.toml"
    text = config.read_text()
    body = re.search(rf"(?ms)^\[{section}\]$.*?(?=^\[|\Z)", text)
    assert body is not None, section
    changed, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", body.group(0))
    assert count == 1, (section, key)
    config.write_text(text[: body.start()] + changed + text[body.end() :])


async def world(tmp: Path, dns: DnsServer) -> tuple[Context, bytes]:
    """A context whose one account is trained and has a Sieve script; a signed message."""
    config = Config(
        server=ServerConfig(hostname="mx.bench.test"), queue=QueueConfig(resolver=dns.address)
    )
    store = await open_store(tmp / "data")
    await store.add_domain("bench.test")
    account = await store.add_account(USER, "hash", None)
    inbox = await store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    for kind in ("spam", "ham"):
        uids = []
        for path in sorted((CORPUS / kind).glob("*.eml")):
            raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            [appended] = await store.append(raw, [AppendTarget(inbox.id)])
            uids.append(appended.uid)
        await train_messages(store, account.id, inbox.id, uids, spam=kind == "spam")
    await store.sieve.put(account.id, "bench", SIEVE)
    await store.sieve.activate(account.id, "bench")
    clock = SystemClock()
    ctx = Context(
        config,
        tmp / "data",
        store,
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
        LoginThrottle(throttle_config(config.auth), clock.monotonic),
        clock,
    )
    record = generate_key(tmp / "keys", SENDER_DOMAIN, "bench", "rsa")
    dns.add(f"bench._domainkey.{SENDER_DOMAIN}", "TXT", txt_value(record))
    dns.add(SENDER_DOMAIN, "TXT", txt_value(f"v=spf1 ip4:{CLIENT_IP} -all"))
    dns.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", txt_value("v=DMARC1; p=reject"))
    key = find_key(tmp / "keys", SENDER_DOMAIN)
    assert key is not None
    return ctx, key.sign(bench_message(0))


async def per_message(count: int) -> list[Result]:
    dns = await DnsServer().start()
    origin = Origin("smtp", "ESMTPS", f"mail.{SENDER_DOMAIN}", CLIENT_IP, "bench")
    envelope = Envelope(f"news@{SENDER_DOMAIN}", (Recipient(USER),))
    results = []
    with tempfile.TemporaryDirectory(prefix="postoffice-filters-bench-") as tmp:
        ctx, signed = await world(Path(tmp), dns)
        try:
            chains = {
                "none": Delivery(ctx, FilterChain(get_logger("filters"))),
                "all": Delivery(ctx),
            }
            for name, delivery in chains.items():
                timings = []
                for _ in range(count):
                    started = time.perf_counter()
                    [verdict] = await delivery.deliver(envelope, signed, origin)
                    timings.append(time.perf_counter() - started)
                    if not verdict.accepted:
                        raise RuntimeError(f"refused: {verdict}")
                label = "no filters" if name == "none" else "SPF+DKIM+DMARC+ARC+junk+Sieve"
                results.append(
                    Result(f"deliver, {label}", statistics.median(timings) * 1000, "ms/msg")
                )
        finally:
            await ctx.close()
            dns.close()
    results.append(Result("filter chain cost", results[1].value - results[0].value, "ms/msg"))
    return results


def ingest(filters: bool, total: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="postoffice-filters-smtp-") as tmp:
        data = Path(tmp) / "data"
        exe = [sys.executable, "-m", "postoffice", "--data", str(data)]
        subprocess.run([*exe, "init", "--domain", "bench.test"], check=True, capture_output=True)
        subprocess.run(
            [*exe, "user", "add", "user@bench.test", "--password", "bench-password-1"],
            check=True,
            capture_output=True,
        )
        set_setting(data, "limits", "max_connections_per_ip", "500")
        if not filters:
            for key in ("spf", "dkim", "arc", "dmarc"):
                set_setting(data, "sender_auth", key, "false")
            set_setting(data, "junk", "enabled", "false")
            set_setting(data, "sieve", "enabled", "false")
        process, port = serving.start_server(data, "smtp")
        try:
            row = asyncio.run(smtp_bench.measure(port, 4096, 16, total))
        finally:
            serving.stop_server(process)
    state = "default filters" if filters else "filters off"
    return Result(f"SMTP ingest 4 KB x16, {state}", row.msgs_per_s, "msgs/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (CI)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = asyncio.run(per_message(20 if args.quick else 500))
    total = 64 if args.quick else 3000
    results += [ingest(False, total), ingest(True, total)]
    for r in results:
        print(f"{r.name:<46} {r.value:>10.1f} {r.unit}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
