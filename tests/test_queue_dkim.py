"""DKIM signing of outbound mail: keys, the TXT record, signatures that verify (dkimpy)."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import dkim as dkimpy
import dns.resolver
import pytest

from outbound_helpers import DnsServer, Sink, World, close, make_world, message, txt_value
from postoffice.queue.dkim import find_key, generate_key


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(tmp_path, Sink())
    yield w
    await close(w)


def lookup_txt(server: DnsServer) -> Callable[[bytes, float], bytes | None]:
    """dkimpy's DNS hook, asking the loopback DNS server (never the system's)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port

    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT", lifetime=timeout)
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    return get_txt


async def verifies(server: DnsServer, signed: bytes) -> bool:
    # In a thread: the DNS server answers on this event loop.
    return bool(await asyncio.to_thread(dkimpy.verify, signed, dnsfunc=lookup_txt(server)))


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
async def test_outbound_mail_from_a_local_domain_is_signed(world: World, algorithm: str) -> None:
    record = generate_key(
        world.ctx.data_dir, "example.test", "s1", "rsa" if algorithm == "rsa" else "ed25519"
    )
    assert record.startswith(f"v=DKIM1; k={algorithm}; p=")
    world.dns.add("s1._domainkey.example.test", "TXT", txt_value(record))
    await world.enqueue("friend@remote.test")
    await world.worker.run_once()
    [received] = world.sink.received
    assert received.data.startswith(b"DKIM-Signature:")
    head = received.data.split(b"\r\n\r\n", 1)[0].decode()
    assert "c=relaxed/relaxed" in head
    assert "d=example.test" in head
    assert "s=s1" in head
    assert received.data.endswith(message())  # the message itself is untouched
    assert await verifies(world.dns, received.data)
    # Altering what was signed breaks it: the check can fail.
    tampered = received.data.replace(b"Subject: hello", b"Subject: HELLO")
    assert not await verifies(world.dns, tampered)


async def test_mail_from_elsewhere_is_not_signed(world: World) -> None:
    generate_key(world.ctx.data_dir, "example.test", "s1", "ed25519")
    # Forwarded mail with a remote envelope sender, even with a From: in our domain.
    await world.enqueue("friend@remote.test", sender="someone@other.test")
    await world.worker.run_once()
    [received] = world.sink.received
    assert not received.data.startswith(b"DKIM-Signature:")


async def test_no_key_no_signature(world: World) -> None:
    await world.enqueue("friend@remote.test")
    await world.worker.run_once()
    [received] = world.sink.received
    assert received.data == message()


def test_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    generate_key(tmp_path, "example.test", "mail", "rsa")
    path = tmp_path / "dkim" / "example.test.mail.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    with pytest.raises(FileExistsError):
        generate_key(tmp_path, "example.test", "mail", "ed25519")
    key = find_key(tmp_path, "example.test")
    assert key is not None
    assert (key.selector, key.algorithm) == ("mail", "rsa")
    assert find_key(tmp_path, "other.test") is None
