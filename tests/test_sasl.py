"""SASL mechanisms (sans-IO) and the Authenticator that drives them."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable

import pytest
from scramp import ScramClient

from postoffice.auth.authenticator import (
    AuthCancelled,
    Authenticator,
    AuthFailure,
    AuthMalformed,
    AuthResult,
    AuthSuccess,
    AuthThrottled,
    AuthUnsupported,
)
from postoffice.auth.passwords import hash_password, parse_scram_record, scram_sha256_record
from postoffice.auth.sasl import (
    MECHANISMS,
    Challenge,
    Failure,
    LoginMechanism,
    NeedsPasswordCheck,
    NeedsScramRecord,
    PlainMechanism,
    SaslCancelled,
    SaslSyntaxError,
    ScramSha256Mechanism,
    Step,
    Success,
    decode_sasl_response,
    encode_challenge,
    mechanisms_offered,
    new_mechanism,
)
from postoffice.auth.throttle import LoginThrottle, ThrottleConfig
from postoffice.store.model import Credentials

SECRET = b"k" * 32


# -- base64 framing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "decoded"),
    [
        (b"", b""),
        (b"=", b""),
        (b"dGVzdA==", b"test"),
        (b"dGVzdA==\r\n", b"test"),
        (b"AGFsaWNlAHNlY3JldA==", b"\x00alice\x00secret"),
    ],
)
def test_decode_sasl_response(line: bytes, decoded: bytes) -> None:
    assert decode_sasl_response(line) == decoded


@pytest.mark.parametrize("line", [b"dGVzdA", b"!!!!", b"dGVz dA==", b"dGVzdA==="])
def test_decode_sasl_response_rejects_bad_base64(line: bytes) -> None:
    with pytest.raises(SaslSyntaxError):
        decode_sasl_response(line)


@pytest.mark.parametrize("line", [b"*", b"*\r\n"])
def test_decode_sasl_response_cancel(line: bytes) -> None:
    with pytest.raises(SaslCancelled):
        decode_sasl_response(line)


def test_encode_challenge() -> None:
    assert encode_challenge(b"") == b""
    assert encode_challenge(b"Username:") == b"VXNlcm5hbWU6"


# -- PLAIN ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "step"),
    [
        (b"\x00alice\x00secret", NeedsPasswordCheck("alice", "secret")),
        (b"alice\x00alice\x00secret", NeedsPasswordCheck("alice", "secret")),
        ("\x00jöe\x00pässword".encode(), NeedsPasswordCheck("jöe", "pässword")),
        (b"bob\x00alice\x00secret", Failure),
        (b"\x00\x00secret", Failure),
        (b"\x00alice\x00", Failure),
        (b"", Failure),
        (b"alice\x00secret", Failure),
        (b"\x00alice\x00sec\x00ret", Failure),
        (b"\x00alice\x00\xff\xfe", Failure),
    ],
)
def test_plain(message: bytes, step: Step | type[Failure]) -> None:
    result = PlainMechanism().start(message)
    if step is Failure:
        assert isinstance(result, Failure)
    else:
        assert result == step


def test_plain_without_initial_response_sends_empty_challenge() -> None:
    mech = PlainMechanism()
    assert mech.start(None) == Challenge(b"")
    assert mech.feed(b"\x00alice\x00secret") == NeedsPasswordCheck("alice", "secret")
    assert isinstance(mech.feed(b"\x00alice\x00secret"), Failure)


# -- LOGIN ---------------------------------------------------------------------------------


def test_login_exchange() -> None:
    mech = LoginMechanism()
    assert mech.start(None) == Challenge(b"Username:")
    assert mech.feed(b"alice") == Challenge(b"Password:")
    assert mech.feed(b"secret") == NeedsPasswordCheck("alice", "secret")
    assert isinstance(mech.feed(b"again"), Failure)


def test_login_initial_response_is_the_user_name() -> None:
    mech = LoginMechanism()
    assert mech.start(b"alice") == Challenge(b"Password:")
    assert mech.feed(b"secret") == NeedsPasswordCheck("alice", "secret")


@pytest.mark.parametrize(
    "responses",
    [[b""], [b"alice", b""], [b"\xff"], [b"alice", b"\xc3"]],
)
def test_login_failures(responses: list[bytes]) -> None:
    mech = LoginMechanism()
    mech.start(None)
    steps = [mech.feed(r) for r in responses]
    assert isinstance(steps[-1], Failure)


# -- SCRAM-SHA-256 -------------------------------------------------------------------------


def scram_exchange(
    password: str, record: tuple[bytes, bytes, bytes, int] | None, username: str = "alice"
) -> tuple[ScramClient, ScramSha256Mechanism, Step]:
    """Run scramp's client against the mechanism up to the server's last step."""
    client = ScramClient(["SCRAM-SHA-256"], username, password)
    mech = ScramSha256Mechanism(SECRET)
    step = mech.start(client.get_client_first().encode())
    assert isinstance(step, NeedsScramRecord)
    assert step.username == username
    step = step.resume(record)
    assert isinstance(step, Challenge)
    client.set_server_first(step.data.decode())
    return client, mech, mech.feed(client.get_client_final().encode())


def test_scram_success_and_server_signature() -> None:
    record = parse_scram_record(scram_sha256_record("pencil"))
    client, _, step = scram_exchange("pencil", record)
    assert isinstance(step, Success)
    assert step.authcid == "alice"
    assert step.server_data is not None
    client.set_server_final(step.server_data.decode())  # raises if the signature is wrong


def test_scram_wrong_password() -> None:
    record = parse_scram_record(scram_sha256_record("pencil"))
    _, _, step = scram_exchange("crayon", record)
    assert isinstance(step, Failure)
    assert "invalid-proof" in step.reason


def test_scram_unknown_user_looks_like_a_known_one() -> None:
    def server_first(username: str) -> str:
        client = ScramClient(["SCRAM-SHA-256"], username, "x")
        step = ScramSha256Mechanism(SECRET).start(client.get_client_first().encode())
        assert isinstance(step, NeedsScramRecord)
        challenge = step.resume(None)
        assert isinstance(challenge, Challenge)
        client.set_server_first(challenge.data.decode())
        return f"{client.salt},{client.iterations}"

    # The same made-up salt every time, a different one per name.
    assert server_first("nobody") == server_first("nobody")
    assert server_first("nobody") != server_first("noone")
    _, _, step = scram_exchange("x", None, username="nobody")
    assert isinstance(step, Failure)


def test_scram_escaped_user_name() -> None:
    client = ScramClient(["SCRAM-SHA-256"], "a,b=c", "pw")
    step = ScramSha256Mechanism(SECRET).start(client.get_client_first().encode())
    assert isinstance(step, NeedsScramRecord)
    assert step.username == "a,b=c"


def test_scram_without_initial_response() -> None:
    assert ScramSha256Mechanism(SECRET).start(None) == Challenge(b"")


@pytest.mark.parametrize(
    "client_first",
    [
        b"",
        b"n,,",
        b"n,,r=abc",
        b"n,,n=,r=abc",
        b"n,,n=a=41b,r=abc",
        b"n,,n=\xff,r=abc",
        b"garbage",
    ],
)
def test_scram_malformed_client_first(client_first: bytes) -> None:
    assert isinstance(ScramSha256Mechanism(SECRET).start(client_first), Failure)


def test_scram_channel_binding_requested_is_refused() -> None:
    step = ScramSha256Mechanism(SECRET).start(b"p=tls-unique,,n=alice,r=abcdef")
    assert isinstance(step, NeedsScramRecord)
    record = parse_scram_record(scram_sha256_record("pw"))
    assert isinstance(step.resume(record), Failure)


def test_scram_steps_out_of_order() -> None:
    mech = ScramSha256Mechanism(SECRET)
    step = mech.start(b"n,,n=alice,r=abcdef")
    assert isinstance(step, NeedsScramRecord)
    assert isinstance(mech.feed(b"c=biws,r=abcdef,p=AAAA"), Failure)
    assert isinstance(step.resume(None), Failure)


def test_scram_garbage_client_final() -> None:
    record = parse_scram_record(scram_sha256_record("pw"))
    mech = ScramSha256Mechanism(SECRET)
    step = mech.start(b"n,,n=alice,r=abcdef")
    assert isinstance(step, NeedsScramRecord)
    assert isinstance(step.resume(record), Challenge)
    assert isinstance(mech.feed(b"c=biws,r=wrongnonce,p=AAAA"), Failure)


# -- choosing mechanisms -------------------------------------------------------------------


def test_new_mechanism() -> None:
    assert isinstance(new_mechanism("plain", scram_secret=SECRET), PlainMechanism)
    assert isinstance(new_mechanism("LOGIN", scram_secret=SECRET), LoginMechanism)
    assert isinstance(new_mechanism("Scram-Sha-256", scram_secret=SECRET), ScramSha256Mechanism)
    assert new_mechanism("CRAM-MD5", scram_secret=SECRET) is None
    for name in MECHANISMS:
        mech = new_mechanism(name, scram_secret=SECRET)
        assert mech is not None
        assert mech.name == name


@pytest.mark.parametrize(
    ("tls_active", "plaintext_allowed", "offered"),
    [
        (True, False, MECHANISMS),
        (True, True, MECHANISMS),
        (False, True, MECHANISMS),
        (False, False, ()),
    ],
)
def test_mechanisms_offered(
    tls_active: bool, plaintext_allowed: bool, offered: tuple[str, ...]
) -> None:
    assert mechanisms_offered(tls_active, plaintext_allowed) == offered
    assert MECHANISMS[0] == "SCRAM-SHA-256"


# -- Authenticator -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


ALICE = Credentials(1, "alice@example.com", hash_password("secret"), scram_sha256_record("secret"))
NOSCRAM = Credentials(2, "old@example.com", hash_password("secret"), None)


async def lookup(address: str) -> Credentials | None:
    return {c.address: c for c in (ALICE, NOSCRAM)}.get(address.lower())


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def auth(sleeps: Sleeps) -> Authenticator:
    clock = Clock()
    return Authenticator(lookup, LoginThrottle(ThrottleConfig(), clock), clock, sleeps)


async def test_password_success_uses_the_stored_spelling(auth: Authenticator) -> None:
    result = await auth.authenticate_password("Alice@Example.com", "secret", "192.0.2.1")
    assert result == AuthSuccess(1, "alice@example.com")


@pytest.mark.parametrize(
    ("address", "password"),
    [("alice@example.com", "wrong"), ("nobody@example.com", "secret"), ("", "")],
)
async def test_password_failure(auth: Authenticator, address: str, password: str) -> None:
    assert isinstance(await auth.authenticate_password(address, password, "192.0.2.1"), AuthFailure)


@pytest.mark.parametrize("address", ["alice@example.com", "nobody@example.com"])
async def test_lockout_alike_for_known_and_unknown_accounts(
    auth: Authenticator, sleeps: Sleeps, address: str
) -> None:
    for i in range(5):
        result = await auth.authenticate_password(address, "wrong", f"192.0.2.{i}")
        assert isinstance(result, AuthFailure)
    result = await auth.authenticate_password(address, "secret", "198.51.100.1")
    assert isinstance(result, AuthThrottled)
    assert result.retry_after == 300
    # Each attempt after the first waited longer: 0.5, 1, 2, 4 s.
    assert sleeps.calls == [0.5, 1.0, 2.0, 4.0]


async def test_success_clears_account_failures(auth: Authenticator, sleeps: Sleeps) -> None:
    for _ in range(4):
        await auth.authenticate_password("alice@example.com", "wrong", "192.0.2.1")
    assert isinstance(
        await auth.authenticate_password("alice@example.com", "secret", "192.0.2.1"), AuthSuccess
    )
    for _ in range(4):
        assert isinstance(
            await auth.authenticate_password("alice@example.com", "wrong", "192.0.2.2"),
            AuthFailure,
        )


class Peer:
    """The client side of a SASL exchange, scripted: each challenge gets the next line."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.answer = answer
        self.challenges: list[bytes] = []
        self.pending = b""

    async def send(self, challenge: bytes) -> None:
        self.challenges.append(challenge)
        self.pending = self.answer(base64.b64decode(challenge))

    async def receive(self) -> bytes:
        return self.pending


def lines(*responses: bytes) -> Callable[[bytes], bytes]:
    queue = list(responses)
    return lambda _challenge: queue.pop(0)


def run(
    auth: Authenticator,
    mechanism: str,
    initial: bytes | None,
    peer: Peer,
    *,
    tls_active: bool = True,
    success_data_allowed: bool = False,
) -> Awaitable[AuthResult]:
    return auth.run_sasl(
        mechanism,
        initial,
        ip="192.0.2.1",
        tls_active=tls_active,
        plaintext_allowed=False,
        send_challenge=peer.send,
        receive_response=peer.receive,
        success_data_allowed=success_data_allowed,
    )


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


async def test_sasl_plain_initial_response(auth: Authenticator) -> None:
    peer = Peer(lines())
    result = await run(auth, "PLAIN", b64(b"\x00alice@example.com\x00secret"), peer)
    assert result == AuthSuccess(1, "alice@example.com")
    assert peer.challenges == []


async def test_sasl_plain_after_empty_challenge(auth: Authenticator) -> None:
    peer = Peer(lines(b64(b"\x00alice@example.com\x00wrong")))
    assert isinstance(await run(auth, "plain", None, peer), AuthFailure)
    assert peer.challenges == [b""]


async def test_sasl_login(auth: Authenticator) -> None:
    peer = Peer(lines(b64(b"alice@example.com"), b64(b"secret")))
    assert await run(auth, "LOGIN", None, peer) == AuthSuccess(1, "alice@example.com")
    assert peer.challenges == [b64(b"Username:"), b64(b"Password:")]


def scram_peer(username: str, password: str, final_reply: bytes = b"") -> tuple[Peer, bytes]:
    client = ScramClient(["SCRAM-SHA-256"], username, password)

    def answer(challenge: bytes) -> bytes:
        if challenge.startswith(b"r="):
            client.set_server_first(challenge.decode())
            return b64(client.get_client_final().encode())
        client.set_server_final(challenge.decode())
        return final_reply

    return Peer(answer), b64(client.get_client_first().encode())


async def test_sasl_scram_final_as_challenge(auth: Authenticator) -> None:
    peer, first = scram_peer("alice@example.com", "secret")
    assert await run(auth, "SCRAM-SHA-256", first, peer) == AuthSuccess(1, "alice@example.com")
    assert len(peer.challenges) == 2
    assert base64.b64decode(peer.challenges[1]).startswith(b"v=")


async def test_sasl_scram_final_with_success(auth: Authenticator) -> None:
    peer, first = scram_peer("alice@example.com", "secret")
    result = await run(auth, "SCRAM-SHA-256", first, peer, success_data_allowed=True)
    assert isinstance(result, AuthSuccess)
    assert result.success_data is not None
    assert base64.b64decode(result.success_data).startswith(b"v=")
    assert len(peer.challenges) == 1


async def test_sasl_scram_non_empty_reply_to_final(auth: Authenticator) -> None:
    peer, first = scram_peer("alice@example.com", "secret", final_reply=b64(b"x"))
    assert isinstance(await run(auth, "SCRAM-SHA-256", first, peer), AuthMalformed)


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice@example.com", "wrong"),
        ("nobody@example.com", "secret"),
        ("old@example.com", "secret"),  # no SCRAM keys stored
    ],
)
async def test_sasl_scram_failures(auth: Authenticator, username: str, password: str) -> None:
    peer, first = scram_peer(username, password)
    assert isinstance(await run(auth, "SCRAM-SHA-256", first, peer), AuthFailure)


async def test_sasl_scram_failures_lock_the_name(auth: Authenticator) -> None:
    for _ in range(5):
        peer, first = scram_peer("nobody@example.com", "x")
        assert isinstance(await run(auth, "SCRAM-SHA-256", first, peer), AuthFailure)
    peer, first = scram_peer("nobody@example.com", "x")
    assert isinstance(await run(auth, "SCRAM-SHA-256", first, peer), AuthThrottled)


async def test_sasl_cancel_and_bad_base64(auth: Authenticator) -> None:
    assert isinstance(await run(auth, "LOGIN", None, Peer(lines(b"*"))), AuthCancelled)
    assert isinstance(await run(auth, "PLAIN", b"*", Peer(lines())), AuthCancelled)
    assert isinstance(await run(auth, "LOGIN", None, Peer(lines(b"%%%"))), AuthMalformed)
    assert isinstance(await run(auth, "PLAIN", b"AGFsaWNl!", Peer(lines())), AuthMalformed)


async def test_sasl_unsupported(auth: Authenticator) -> None:
    assert await run(auth, "CRAM-MD5", None, Peer(lines())) == AuthUnsupported("CRAM-MD5")
    peer = Peer(lines())
    result = await run(
        auth, "PLAIN", b64(b"\x00alice@example.com\x00secret"), peer, tls_active=False
    )
    assert result == AuthUnsupported("PLAIN")


async def test_sasl_ip_lockout_refuses_before_the_exchange(auth: Authenticator) -> None:
    for i in range(10):
        await auth.authenticate_password(f"user{i}@example.com", "x", "192.0.2.1")
    peer = Peer(lines())
    assert isinstance(await run(auth, "LOGIN", None, peer), AuthThrottled)
    assert peer.challenges == []
