"""`serve` runs the queue: mail submitted by a user reaches a remote (loopback) server, with
`--workers 2` exactly one process delivers it, and SIGTERM stops a delivery cleanly."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from pathlib import Path

from conftest import Cli, StartServe
from outbound_helpers import DnsServer, Sink
from postoffice.config import CONFIG_FILE
from postoffice.store import open_store
from postoffice.store.api import QueueState

RAW = (
    "From: <bob@example.test>\r\nTo: <friend@remote.test>\r\nSubject: out\r\n"
    "Message-ID: <out1@example.test>\r\n\r\nhello world\r\n"
)


def point_queue_at(data: Path, dns: DnsServer, sink: Sink) -> None:
    path = data / CONFIG_FILE
    text = path.read_text()
    for old, new in (
        ('resolver = ""', f'resolver = "{dns.address}"'),
        ("smtp_port = 25", f"smtp_port = {sink.port}"),
        ("poll_seconds = 5", "poll_seconds = 0.1"),
    ):
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)


def submit(port: int) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=context)
        client.login("bob@example.test", "secret-pw-1")
        client.sendmail("bob@example.test", ["friend@remote.test"], RAW)


async def test_serve_delivers_submitted_mail_once_with_two_workers(
    cli: Cli, data_dir: Path, start_serve: StartServe
) -> None:
    dns = await DnsServer().start()
    dns.mail_domain("remote.test")
    sink = await Sink().start()
    try:
        cli.ok("user", "add", "bob@example.test", "--password", "secret-pw-1")
        point_queue_at(data_dir, dns, sink)
        server = await asyncio.to_thread(start_serve, "--workers", "2")
        _, port = server.address("submission")
        await asyncio.to_thread(submit, port)
        for _ in range(600):  # up to 30 s
            if sink.received:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # time for a second, wrong, delivery to show up
        assert await asyncio.to_thread(server.stop) == 0
        [received] = sink.received
        assert received.recipients == ["friend@remote.test"]
        assert received.sender == "bob@example.test"
        assert b"Subject: out" in received.data
        assert sum("queue worker started" in line for line in server.lines) == 1
    finally:
        await sink.close()
        dns.close()


async def test_sigterm_stops_a_delivery_in_progress_and_keeps_the_mail(
    cli: Cli, data_dir: Path, start_serve: StartServe
) -> None:
    dns = await DnsServer().start()
    dns.mail_domain("remote.test")
    sink = await Sink(delay=60).start()  # greets after a minute: the worker is stuck
    try:
        cli.ok("user", "add", "bob@example.test", "--password", "secret-pw-1")
        point_queue_at(data_dir, dns, sink)
        server = await asyncio.to_thread(start_serve)
        _, port = server.address("submission")
        await asyncio.to_thread(submit, port)
        for _ in range(600):
            if sink.connections:
                break
            await asyncio.sleep(0.05)
        assert sink.connections
        started = time.monotonic()
        assert await asyncio.to_thread(server.stop) == 0
        assert time.monotonic() - started < 10
        store = await open_store(data_dir)
        try:
            [queued] = await store.outbound.list(state=None)
        finally:
            await store.close()
        assert [r.recipient.address for r in queued.recipients] == ["friend@remote.test"]
        assert queued.recipients[0].state is QueueState.PENDING
    finally:
        await sink.close()
        dns.close()
