"""SASL mechanisms (sans-IO) and the Authenticator that drives them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable

import pytest
from scramp import ScramClient, ScramMechanism

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


class HandScramClient:
    """The client side of RFC 5802 §3 written out: scramp's ScramClient cannot send an authzid.

    `escaped_name` goes on the wire as given; `final` can send a different c= or nonce.
    """

    def __init__(self, gs2_header: str, escaped_name: str, password: str) -> None:
        self.gs2_header = gs2_header
        self.bare = f"n={escaped_name},r=rOprNGfwEbeRWgbNEkqO"
        self.password = password
        self.server_signature = b""

    def first(self) -> bytes:
        return (self.gs2_header + self.bare).encode()

    def final(
        self, server_first: bytes, *, gs2_header: str | None = None, nonce: str = ""
    ) -> bytes:
        attrs = dict(a.split("=", 1) for a in server_first.decode().split(","))
        salted = hashlib.pbkdf2_hmac(
            "sha256", self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        binding = b64((self.gs2_header if gs2_header is None else gs2_header).encode()).decode()
        without_proof = f"c={binding},r={nonce or attrs['r']}"
        auth_message = f"{self.bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        proof = bytes(k ^ s for k, s in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self.server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={b64(proof).decode()}".encode()


def hand_exchange(
    client: HandScramClient,
    record: tuple[bytes, bytes, bytes, int] | None,
    *,
    gs2_header: str | None = None,
    nonce: str = "",
) -> Step:
    mech = ScramSha256Mechanism(SECRET)
    step = mech.start(client.first())
    assert isinstance(step, NeedsScramRecord)
    challenge = step.resume(record)
    assert isinstance(challenge, Challenge)
    return mech.feed(client.final(challenge.data, gs2_header=gs2_header, nonce=nonce))


PENCIL = parse_scram_record(scram_sha256_record("pencil"))


def test_scram_rfc7677_test_vector(monkeypatch: pytest.MonkeyPatch) -> None:
    # RFC 7677 §3, byte for byte, with the server nonce and salt of the example.
    monkeypatch.setattr(secrets, "token_urlsafe", lambda _n: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    record = ScramMechanism("SCRAM-SHA-256").make_auth_info("pencil", 4096, salt)
    mech = ScramSha256Mechanism(SECRET)
    step = mech.start(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert isinstance(step, NeedsScramRecord)
    assert step.resume(record) == Challenge(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    final = (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert mech.feed(final) == Success("user", b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


@pytest.mark.parametrize(
    ("gs2_header", "escaped_name", "authcid"),
    [
        ("n,a=bob@example.test,", "bob@example.test", "bob@example.test"),
        ("n,a=a=2Cb=3Dc,", "a=2Cb=3Dc", "a,b=c"),
        ("y,a=alice,", "alice", "alice"),
        ("y,,", "alice", "alice"),
        ("n,,", "alice", "alice"),
    ],
)
def test_scram_hand_client_success(gs2_header: str, escaped_name: str, authcid: str) -> None:
    client = HandScramClient(gs2_header, escaped_name, "pencil")
    step = hand_exchange(client, PENCIL)
    assert step == Success(authcid, b"v=" + b64(client.server_signature))


@pytest.mark.parametrize("authzid", ["a=carol@example.test", "a=bob", "a=bob@example.test=2C"])
def test_scram_authzid_other_than_the_user_is_refused(authzid: str) -> None:
    mech = ScramSha256Mechanism(SECRET)
    client = HandScramClient(f"n,{authzid},", "bob@example.test", "pencil")
    step = mech.start(client.first())
    assert isinstance(step, NeedsScramRecord)
    refused = step.resume(PENCIL)
    assert isinstance(refused, Failure)
    assert "authorization identity" in refused.reason


@pytest.mark.parametrize(
    ("password", "record", "gs2_header", "nonce", "reason"),
    [
        ("crayon", PENCIL, None, "", "invalid-proof"),
        ("pencil", None, None, "", "invalid-proof"),  # unknown user
        ("pencil", PENCIL, "n,,", "", "channel-bindings-dont-match"),
        ("pencil", PENCIL, "y,a=bob,", "", "channel-bindings-dont-match"),
        ("pencil", PENCIL, None, "rOprNGfwEbeRWgbNEkqOforged", "nonce"),
        ("pencil", PENCIL, None, "rOprNGfwEbeRWgbNEkqO", "nonce"),
    ],
)
def test_scram_hand_client_failures(
    password: str,
    record: tuple[bytes, bytes, bytes, int] | None,
    gs2_header: str | None,
    nonce: str,
    reason: str,
) -> None:
    client = HandScramClient("n,a=bob,", "bob", password)
    step = hand_exchange(client, record, gs2_header=gs2_header, nonce=nonce)
    assert isinstance(step, Failure)
    assert reason in step.reason


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c, r, p: b"c=biws," + r + b"," + p,  # c= without the authzid
        lambda c, r, p: c + b"," + r + b"X," + p,  # another nonce
        lambda c, r, p: c + b"," + r + b"," + p[:-4] + b"AAA=",  # another proof
        lambda c, r, p: c + b"," + r + b",p=AAAA",  # proof of the wrong length
        lambda c, r, p: c + b"," + r + b",p=%%%%",  # proof not base64
        lambda c, r, p: c + b"," + r + b",x=ext",  # no proof
        lambda c, r, p: c + b"," + r + b",=x," + p,  # malformed extension
        lambda c, r, p: r + b"," + c + b"," + p,  # attributes out of order
        lambda c, r, p: c + b"," + r + b"," + p + b"\xff",  # not UTF-8
    ],
)
def test_scram_tampered_client_final_fails(
    monkeypatch: pytest.MonkeyPatch, tamper: Callable[[bytes, bytes, bytes], bytes]
) -> None:
    # A fixed server nonce, so that the untampered message is checked to pass as well.
    monkeypatch.setattr(secrets, "token_urlsafe", lambda _n: "server-nonce")

    def server_first(mech: ScramSha256Mechanism) -> bytes:
        step = mech.start(client.first())
        assert isinstance(step, NeedsScramRecord)
        challenge = step.resume(PENCIL)
        assert isinstance(challenge, Challenge)
        return challenge.data

    client = HandScramClient("n,a=bob,", "bob", "pencil")
    good_mech, bad_mech = ScramSha256Mechanism(SECRET), ScramSha256Mechanism(SECRET)
    good = client.final(server_first(good_mech))
    assert server_first(bad_mech) == server_first(ScramSha256Mechanism(SECRET))
    channel, nonce, proof = good.split(b",")
    assert isinstance(good_mech.feed(good), Success)
    assert isinstance(bad_mech.feed(tamper(channel, nonce, proof)), Failure)


@pytest.mark.parametrize(
    "client_first",
    [
        b"n,bob,n=bob,r=abc",  # authzid without "a="
        b"n,a=,n=bob,r=abc",
        b"n,a=b=41,n=bob,r=abc",
        b"x,,n=bob,r=abc",
        b"p=,,n=bob,r=abc",
        b"n,,m=ext,n=bob,r=abc",  # RFC 5802 §5.1: reserved "m" must fail
        b"n,,n=bob,r=a b",
        b"n,,n=bob,r=",
        b"n,,n=bob,r=abc,=x",
        b"n,,n=bob,r=abc,",
    ],
)
def test_scram_malformed_gs2_header_or_bare(client_first: bytes) -> None:
    assert isinstance(ScramSha256Mechanism(SECRET).start(client_first), Failure)


def test_scram_extensions_in_client_first_are_ignored() -> None:
    mech = ScramSha256Mechanism(SECRET)
    step = mech.start(b"n,,n=bob,r=abc,x=whatever")
    assert isinstance(step, NeedsScramRecord)
    assert isinstance(step.resume(PENCIL), Challenge)


def test_scram_name_changed_by_saslprep_gets_no_keys() -> None:
    # U+00AD maps to nothing under SASLprep: keys found for the name as sent must not serve
    # "bob", so the right password still fails.
    client = HandScramClient("n,,", "b\u00adob", "pencil")
    step = hand_exchange(client, PENCIL)
    assert isinstance(step, Failure)
    assert "invalid-proof" in step.reason


def test_scram_name_refused_by_saslprep() -> None:
    step = ScramSha256Mechanism(SECRET).start("n,,n=b\u0007ob,r=abc".encode())
    assert isinstance(step, NeedsScramRecord)
    refused = step.resume(PENCIL)
    assert isinstance(refused, Failure)
    assert "SASLprep" in refused.reason


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
