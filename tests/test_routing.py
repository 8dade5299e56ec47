"""Address routing and policy: relay forms, aliases, catch-all, plus-addressing, senders."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from postoffice.config import Config, ServerConfig, SmtpConfig
from postoffice.delivery.model import Origin, Outcome
from postoffice.delivery.routing import (
    MAX_ALIAS_DEPTH,
    Address,
    AddressError,
    Route,
    Router,
    parse_address,
)
from postoffice.store import SqliteStore, open_store

CONFIG = Config(server=ServerConfig(hostname="mx.example.test"))

MX = Origin(
    listener="smtp", protocol="ESMTP", helo="client.test", peer_ip="192.0.2.7", session_id="s1"
)
LMTP = dataclasses.replace(MX, listener="lmtp", protocol="LMTP")


def submission(account_id: int, address: str) -> Origin:
    return dataclasses.replace(
        MX,
        listener="submission",
        protocol="ESMTPSA",
        account_id=account_id,
        auth_address=address,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await open_store(tmp_path)
    await s.add_domain("example.test")
    await s.add_domain("other.test")
    for user in ("bob@example.test", "alice@example.test", "carol@other.test"):
        await s.add_account(user, "hash", None)
    aliases: dict[str, list[str]] = {
        "postmaster@example.test": ["bob@example.test"],
        "team@example.test": ["bob@example.test", "Alice@Example.test"],
        "both@example.test": ["team@example.test", "bob@example.test"],
        "chain1@example.test": ["chain2@example.test"],
        "chain2@example.test": ["bob@example.test"],
        "loop-a@example.test": ["loop-b@example.test"],
        "loop-b@example.test": ["loop-a@example.test"],
        "loopy@example.test": ["loopy@example.test", "bob@example.test"],
        "fwd@example.test": ["friend@remote.test", "alice@example.test"],
        "alice+news@example.test": ["bob@example.test"],
        "broken@example.test": ["gone@example.test"],
        "garbled@example.test": ["not an address", "secret@example.test."],
        "sales@other.test": ["alice@example.test"],
        "@other.test": ["carol@other.test"],
    }
    # deep1 starts a chain of as many aliases as the cap allows; deep0 is one too many.
    for n in range(MAX_ALIAS_DEPTH):
        aliases[f"deep{n}@example.test"] = [f"deep{n + 1}@example.test"]
    aliases[f"deep{MAX_ALIAS_DEPTH}@example.test"] = ["bob@example.test"]
    for address, targets in aliases.items():
        await s.add_alias(address, targets)
    yield s
    await s.close()


@pytest.fixture
def router(store: SqliteStore) -> Router:
    return Router(store, CONFIG)


def local_names(route: Route) -> list[str]:
    return sorted(d.account.address for d in route.local)


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bob@example.test", Address("bob", "example.test", "bob@example.test")),
        ("Bob@Example.TEST", Address("Bob", "example.test", "Bob@example.test")),
        ('"bob"@example.test', Address("bob", "example.test", '"bob"@example.test', True)),
        (
            '"a\\"b c"@example.test',
            Address('a"b c', "example.test", '"a\\"b c"@example.test', True),
        ),
        (
            "@a.test,@b.test:bob@example.test",
            Address("bob", "example.test", "bob@example.test", route="@a.test,@b.test"),
        ),
        ("bob@[192.0.2.1]", Address("bob", "[192.0.2.1]", "bob@[192.0.2.1]")),
        ("bob@example.test.", Address("bob", "example.test.", "bob@example.test.")),
        ("Postmaster", Address("Postmaster", "", "Postmaster")),
    ],
)
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "bob@",
        "@example.test",
        "@a.test",
        "a b@example.test",
        "bob@exa mple.test",
        "bob@example..test",
        "<bob>@example.test",
        '"unbalanced@example.test',
        '"a"b"@example.test',
        "bob@[192.0.2.1",
        "bob@exa%mple.test",
        "bob\r\n@example.test",
        '""@example.test',
    ],
)
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


# -- relay policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "someone@remote.test",
        "someone%remote.test@example.test",
        "bob%example.test@example.test",
        "@example.test:bob@example.test",
        "@mx.example.test,@example.test:someone@remote.test",
        "remote.test!someone@example.test",
        '"someone@remote.test"@example.test',
        '"someone%remote.test"@example.test',
        '"remote.test!someone"@example.test',
        "bob@[127.0.0.1]",
        "bob@[IPv6:::1]",
        "bob@example.test.",
        "someone@remote.test.",
    ],
)
@pytest.mark.parametrize("origin", [MX, LMTP], ids=["mx", "lmtp"])
async def test_relay_forms_are_denied_without_auth(
    router: Router, origin: Origin, text: str
) -> None:
    route = await router.route(text, origin)
    assert route.verdict.outcome is Outcome.RELAY_DENIED, route
    assert route.verdict.detail
    assert not route.local
    assert not route.remote


@pytest.mark.parametrize(
    "text",
    ["bob@example.test", "BOB@EXAMPLE.TEST", "Bob@Example.Test", '"bob"@example.test'],
)
async def test_local_addresses_in_any_case(router: Router, text: str) -> None:
    route = await router.route(text, MX)
    assert route.verdict.accepted
    assert local_names(route) == ["bob@example.test"]
    assert route.local[0].delivered_to == "bob@example.test"
    assert route.remote == ()


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        ("nobody@example.test", Outcome.UNKNOWN_USER),
        ("bob@", Outcome.BAD_ADDRESS),
        ("bob", Outcome.BAD_ADDRESS),
        ("a b@example.test", Outcome.BAD_ADDRESS),
    ],
)
async def test_unknown_and_malformed(router: Router, text: str, outcome: Outcome) -> None:
    assert (await router.route(text, MX)).verdict.outcome is outcome


async def test_postmaster_without_domain(router: Router) -> None:
    # RFC 5321 §4.5.1; the host mx.example.test is served by the domain example.test.
    route = await router.route("Postmaster", MX)
    assert local_names(route) == ["bob@example.test"]


async def test_postmaster_without_domain_on_unserved_host(store: SqliteStore) -> None:
    config = Config(server=ServerConfig(hostname="mail.elsewhere.test"))
    route = await Router(store, config).route("postmaster", MX)
    assert route.verdict.outcome is Outcome.UNKNOWN_USER


async def test_authenticated_may_send_anywhere(store: SqliteStore, router: Router) -> None:
    bob = await store.get_account("bob@example.test")
    assert bob is not None
    origin = submission(bob.id, bob.address)
    cases = {
        "someone@remote.test": ("someone@remote.test",),
        "@relay.test:someone@remote.test": ("someone@remote.test",),  # RFC 5321 §4.1.1.3
        "someone@[192.0.2.1]": ("someone@[192.0.2.1]",),
        '"odd one"@remote.test': ('"odd one"@remote.test',),
    }
    for text, remote in cases.items():
        route = await router.route(text, origin)
        assert route.verdict.accepted, text
        assert route.remote == remote
        assert route.local == ()
    local = await router.route("alice@example.test", origin)
    assert local_names(local) == ["alice@example.test"]
    assert (await router.route("nobody@example.test", origin)).verdict.outcome is (
        Outcome.UNKNOWN_USER
    )
    assert (await router.route("someone@remote.test.", origin)).verdict.outcome is (
        Outcome.BAD_ADDRESS
    )


# -- aliases -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "local", "remote"),
    [
        ("postmaster@example.test", ["bob@example.test"], ()),
        ("team@example.test", ["alice@example.test", "bob@example.test"], ()),
        ("both@example.test", ["alice@example.test", "bob@example.test"], ()),
        ("chain1@example.test", ["bob@example.test"], ()),
        ("CHAIN1@example.test", ["bob@example.test"], ()),
        ("loopy@example.test", ["bob@example.test"], ()),
        ("fwd@example.test", ["alice@example.test"], ("friend@remote.test",)),
        ("deep1@example.test", ["bob@example.test"], ()),
    ],
)
async def test_alias_expansion(
    router: Router, text: str, local: list[str], remote: tuple[str, ...]
) -> None:
    # Aliases are the admin's: an unauthenticated origin may reach their remote targets.
    route = await router.route(text, MX)
    assert route.verdict.accepted, route
    assert local_names(route) == local
    assert route.remote == remote


async def test_alias_destinations_are_unique(router: Router) -> None:
    route = await router.route("both@example.test", MX)
    assert len(route.local) == len({d.account.id for d in route.local}) == 2


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("loop-a@example.test", "alias loop"),
        ("deep0@example.test", "nested too deeply"),
        ("broken@example.test", "no such user"),
        ("garbled@example.test", "bad alias target"),
    ],
)
async def test_alias_dead_ends(router: Router, text: str, detail: str) -> None:
    route = await router.route(text, MX)
    assert route.verdict.outcome is Outcome.UNKNOWN_USER
    assert detail in route.verdict.detail
    assert "secret" not in route.verdict.detail  # the client never sees alias contents


# -- catch-all -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "local", "delivered_to"),
    [
        ("anything@other.test", ["carol@other.test"], "carol@other.test"),
        ("carol@other.test", ["carol@other.test"], "carol@other.test"),
        ("sales@other.test", ["alice@example.test"], "alice@example.test"),  # alias first
        ("carol+x@other.test", ["carol@other.test"], "carol+x@other.test"),  # plus first
        ("Whoever@OTHER.test", ["carol@other.test"], "carol@other.test"),
    ],
)
async def test_catch_all_is_the_last_resort(
    router: Router, text: str, local: list[str], delivered_to: str
) -> None:
    route = await router.route(text, MX)
    assert local_names(route) == local
    assert route.local[0].delivered_to == delivered_to


async def test_no_catch_all_in_other_domains(router: Router) -> None:
    assert (await router.route("anything@example.test", MX)).verdict.outcome is (
        Outcome.UNKNOWN_USER
    )


# -- plus-addressing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delimiter", "text", "local", "delivered_to"),
    [
        ("+", "bob+tag@example.test", ["bob@example.test"], "bob+tag@example.test"),
        ("+", "Bob+Tag@example.test", ["bob@example.test"], "bob+Tag@example.test"),
        ("+", "bob+a+b@example.test", ["bob@example.test"], "bob+a+b@example.test"),
        ("+", "alice+news@example.test", ["bob@example.test"], "bob@example.test"),
        ("+", "alice+other@example.test", ["alice@example.test"], "alice+other@example.test"),
        ("+", "team+x@example.test", ["alice@example.test", "bob@example.test"], None),
        ("+", "+tag@example.test", [], None),
        ("+", "bob-tag@example.test", [], None),
        ("-", "bob-tag@example.test", ["bob@example.test"], "bob-tag@example.test"),
        ("-", "bob+tag@example.test", [], None),
        ("", "bob+tag@example.test", [], None),
    ],
)
async def test_plus_addressing(
    store: SqliteStore, delimiter: str, text: str, local: list[str], delivered_to: str | None
) -> None:
    config = dataclasses.replace(CONFIG, smtp=SmtpConfig(recipient_delimiter=delimiter))
    route = await Router(store, config).route(text, MX)
    assert local_names(route) == local
    if not local:
        assert route.verdict.outcome is Outcome.UNKNOWN_USER
    if delivered_to is not None:
        assert route.local[0].delivered_to == delivered_to


# -- sender policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "sender", "outcome"),
    [
        ("bob@example.test", "bob@example.test", Outcome.ACCEPTED),
        ("bob@example.test", "BOB@Example.TEST", Outcome.ACCEPTED),
        ("bob@example.test", "bob+lists@example.test", Outcome.ACCEPTED),
        ("bob@example.test", "postmaster@example.test", Outcome.ACCEPTED),
        ("bob@example.test", "team@example.test", Outcome.ACCEPTED),
        ("bob@example.test", "chain1@example.test", Outcome.ACCEPTED),
        ("bob@example.test", "@relay.test:bob@example.test", Outcome.ACCEPTED),
        ("alice@example.test", "team@example.test", Outcome.ACCEPTED),
        ("alice@example.test", "fwd@example.test", Outcome.ACCEPTED),
        ("bob@example.test", "fwd@example.test", Outcome.SENDER_NOT_OWNED),
        ("bob@example.test", "alice@example.test", Outcome.SENDER_NOT_OWNED),
        ("bob@example.test", "", Outcome.SENDER_NOT_OWNED),
        ("bob@example.test", "bob@remote.test", Outcome.SENDER_NOT_OWNED),
        ("bob@example.test", "bob@example.test.", Outcome.SENDER_NOT_OWNED),
        ("bob@example.test", "bob@[192.0.2.1]", Outcome.SENDER_NOT_OWNED),
        ("bob@example.test", "nobody@example.test", Outcome.SENDER_NOT_OWNED),
        ("bob@example.test", "not an address", Outcome.SENDER_NOT_OWNED),
        # A catch-all delivers to carol but does not make every address hers.
        ("carol@other.test", "anything@other.test", Outcome.SENDER_NOT_OWNED),
        ("carol@other.test", "carol@other.test", Outcome.ACCEPTED),
    ],
)
async def test_submission_sender_must_be_owned(
    store: SqliteStore, router: Router, user: str, sender: str, outcome: Outcome
) -> None:
    account = await store.get_account(user)
    assert account is not None
    verdict = await router.check_sender(sender, submission(account.id, account.address))
    assert verdict.outcome is outcome


@pytest.mark.parametrize(
    ("sender", "outcome"),
    [
        ("", Outcome.ACCEPTED),  # bounces
        ("someone@remote.test", Outcome.ACCEPTED),
        ("someone@[192.0.2.1]", Outcome.ACCEPTED),
        ("bob@example.test", Outcome.SENDER_FORGED),
        ("Bob@EXAMPLE.test", Outcome.SENDER_FORGED),
        ("nobody@example.test", Outcome.SENDER_FORGED),
        ("anyone@other.test", Outcome.SENDER_FORGED),
        ("bob@example.test.", Outcome.SENDER_FORGED),
        ("@relay.test:bob@example.test", Outcome.SENDER_FORGED),
        ("bob@", Outcome.BAD_ADDRESS),
    ],
)
async def test_mx_sender_policy(router: Router, sender: str, outcome: Outcome) -> None:
    assert (await router.check_sender(sender, MX)).outcome is outcome


async def test_lmtp_trusts_local_senders(router: Router) -> None:
    # A mailing list manager behind LMTP sends from our own domains.
    assert (await router.check_sender("list@example.test", LMTP)).accepted
