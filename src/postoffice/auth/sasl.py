"""SASL server mechanisms as sans-IO state machines (RFC 4422), shared by every protocol.

A mechanism is fed the client's *decoded* responses and answers with a `Step`.  It never
checks a password itself: PLAIN and LOGIN end in `NeedsPasswordCheck`, SCRAM pauses in
`NeedsScramRecord` until the caller has looked the user up.  The store is async and argon2 is
slow, so both belong to the caller (`authenticator.py`), not to the mechanism.

The base64 framing every protocol uses for challenges and responses (SMTP RFC 4954, IMAP
RFC 9051 §6.2.2, POP3 RFC 5034, ManageSieve RFC 5804) lives here too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Protocol

from scramp import ScramException
from scramp.utils import saslprep

from postoffice.auth.passwords import SCRAM_ITERATIONS, SCRAM_MECHANISM

ScramRecord = tuple[bytes, bytes, bytes, int]  # salt, stored_key, server_key, iterations

# Strongest first: clients that take the first mechanism they know get SCRAM.
MECHANISMS: tuple[str, ...] = ("SCRAM-SHA-256", "PLAIN", "LOGIN")


class SaslError(Exception):
    """A client response that cannot be fed to a mechanism."""


class SaslCancelled(SaslError):
    """The client sent `*` (RFC 4422 §3.5): the exchange is aborted, not failed."""


class SaslSyntaxError(SaslError):
    """The client response is not valid base64."""


def decode_sasl_response(line: bytes) -> bytes:
    """Decode one client response line (without its CRLF) to the bytes a mechanism takes.

    Raises SaslCancelled for `*` and SaslSyntaxError for anything that is not strict base64.
    """
    text = line.strip(b" \t\r\n")
    # RFC 4954 §4, RFC 4959 §3, RFC 5034 §4: "*" cancels the exchange.
    if text == b"*":
        raise SaslCancelled("authentication cancelled by the client")
    # RFC 4954 §4, RFC 4959 §3: "=" is an initial response of zero length; an empty line is
    # an empty continuation response.
    if text in (b"", b"="):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise SaslSyntaxError(f"invalid base64 in SASL response: {e}") from e


def encode_challenge(data: bytes) -> bytes:
    """Base64-encode a server challenge; the protocol adds its own prefix and CRLF."""
    return base64.b64encode(data)


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send `data` to the client and feed its answer back with `feed`."""

    data: bytes


@dataclass(frozen=True, slots=True)
class NeedsPasswordCheck:
    """Terminal for PLAIN/LOGIN: the caller verifies `password` for `authcid`."""

    authcid: str
    password: str


@dataclass(frozen=True, slots=True)
class NeedsScramRecord:
    """The caller looks `username` up and calls `resume` with its SCRAM keys (None when the
    user is unknown or has none: the exchange then runs on and fails at the proof)."""

    username: str
    resume: Callable[[ScramRecord | None], Step] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Success:
    """`server_data` is data to deliver with success (SCRAM's server-final-message)."""

    authcid: str
    server_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str


Step = Challenge | NeedsPasswordCheck | NeedsScramRecord | Success | Failure

# RFC 5802 §7: saslname = 1*(value-safe-char / "=2C" / "=3D")
_SCRAM_SASLNAME = re.compile(r"(?:[^\x00=,]|=2C|=3D)+")
# RFC 5802 §7: printable = %x21-2B / %x2D-7E, the characters a nonce is made of.
_SCRAM_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
# RFC 5802 §7: attr-val = ALPHA "=" value, for extensions the server ignores.
_SCRAM_ATTRIBUTE = re.compile(r"[A-Za-z]=[^\x00,]+")
# RFC 5802 §7: gs2-cbind-flag "p=" cb-name, cb-name = 1*(ALPHA / DIGIT / "." / "-")
_GS2_CB_FLAG = re.compile(r"p=[A-Za-z0-9.-]+")

_FINISHED = Failure("the authentication exchange has already finished")


class Mechanism(Protocol):
    @property
    def name(self) -> str: ...

    def start(self, initial_response: bytes | None) -> Step:
        """Begin; `initial_response` is the decoded SASL-IR, None when the client sent none."""
        ...

    def feed(self, response: bytes) -> Step:
        """Take the decoded answer to the last Challenge."""
        ...


class PlainMechanism:
    """RFC 4616: one message `[authzid] NUL authcid NUL passwd`."""

    name = "PLAIN"

    def __init__(self) -> None:
        self._done = False

    def start(self, initial_response: bytes | None) -> Step:
        if initial_response is None:
            # RFC 4422 §5: no initial response, so the server sends an empty challenge.
            return Challenge(b"")
        return self.feed(initial_response)

    def feed(self, response: bytes) -> Step:
        if self._done:
            return _FINISHED
        self._done = True
        try:
            text = response.decode("utf-8")
        except UnicodeDecodeError:
            return Failure("PLAIN message is not UTF-8")
        fields = text.split("\x00")
        # RFC 4616 §2: exactly two NULs, none inside a field.
        if len(fields) != 3:
            return Failure("malformed PLAIN message")
        authzid, authcid, password = fields
        if not authcid or not password:
            return Failure("empty user name or password")
        # RFC 4616 §2: acting as another identity is not offered, so an authzid is
        # accepted only when it names the user themself.
        if authzid and authzid != authcid:
            return Failure("authorization identity differs from authentication identity")
        return NeedsPasswordCheck(authcid, password)


class _LoginState(Enum):
    USERNAME = auto()
    PASSWORD = auto()
    DONE = auto()


class LoginMechanism:
    """The obsolete LOGIN mechanism (draft-murchison-sasl-login): user name, then password."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._state = _LoginState.USERNAME
        self._username = ""

    def start(self, initial_response: bytes | None) -> Step:
        if initial_response is None:
            return Challenge(b"Username:")
        # draft-murchison-sasl-login §2.1: an initial response carries the user name.
        return self.feed(initial_response)

    def feed(self, response: bytes) -> Step:
        try:
            text = response.decode("utf-8")
        except UnicodeDecodeError:
            self._state = _LoginState.DONE
            return Failure("LOGIN response is not UTF-8")
        match self._state:
            case _LoginState.USERNAME:
                if not text:
                    self._state = _LoginState.DONE
                    return Failure("empty user name")
                self._username = text
                self._state = _LoginState.PASSWORD
                return Challenge(b"Password:")
            case _LoginState.PASSWORD:
                self._state = _LoginState.DONE
                if not text:
                    return Failure("empty password")
                return NeedsPasswordCheck(self._username, text)
            case _LoginState.DONE:
                return _FINISHED


class _ScramRefused(Exception):
    """A SCRAM message that ends the exchange; the text is the Failure reason."""


@dataclass(frozen=True, slots=True)
class _ClientFirst:
    gs2_header: str  # verbatim: client-final's c= must repeat it byte for byte (RFC 5802 §7)
    wants_channel_binding: bool
    authzid: str | None
    username: str
    nonce: str
    bare: str


@dataclass(frozen=True, slots=True)
class _AwaitingClientFirst:
    pass


@dataclass(frozen=True, slots=True)
class _AwaitingLookup:
    first: _ClientFirst


@dataclass(frozen=True, slots=True)
class _AwaitingClientFinal:
    first: _ClientFirst
    nonce: str
    server_first: str
    stored_key: bytes
    server_key: bytes


@dataclass(frozen=True, slots=True)
class _Finished:
    pass


_ScramState = _AwaitingClientFirst | _AwaitingLookup | _AwaitingClientFinal | _Finished


class ScramSha256Mechanism:
    """RFC 7677 SCRAM-SHA-256 (RFC 5802 §3, §5), server side, without channel binding.

    Written out here rather than taken from scramp: scramp refuses every gs2-header authzid
    ("The GS2 authzid must be empty"), yet RFC 5802 §5.1 allows one and Cyrus SASL (mutt)
    always sends it.  Rewriting the header before handing it to scramp cannot work either,
    because client-final's c= repeats the header inside the signed AuthMessage.  scramp still
    derives the stored keys (`passwords.py`) and supplies SASLprep.

    `secret` keys the made-up salt served for unknown users: the same user name always gets
    the same salt, so an attacker cannot tell unknown users from known ones (RFC 5802 §5.1).
    """

    name = SCRAM_MECHANISM

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._state: _ScramState = _AwaitingClientFirst()

    def start(self, initial_response: bytes | None) -> Step:
        if initial_response is None:
            return Challenge(b"")
        return self.feed(initial_response)

    def feed(self, response: bytes) -> Step:
        # Any step that does not set the next state ends the exchange.
        state, self._state = self._state, _Finished()
        match state:
            case _AwaitingClientFirst():
                return self._client_first_message(response)
            case _AwaitingClientFinal():
                return self._client_final_message(state, response)
            case _AwaitingLookup():
                return Failure("response fed before the user was looked up")
            case _Finished():
                return _FINISHED

    def _client_first_message(self, response: bytes) -> Step:
        try:
            first = _parse_client_first(response)
        except _ScramRefused as e:
            return Failure(f"SCRAM: {e}")
        self._state = _AwaitingLookup(first)
        return NeedsScramRecord(first.username, self._resume)

    def _resume(self, record: ScramRecord | None) -> Step:
        state, self._state = self._state, _Finished()
        if not isinstance(state, _AwaitingLookup):
            return _FINISHED
        first = state.first
        # Refused after the lookup rather than at the first message: with the name known, the
        # failure counts against it (authenticator.py), as a wrong proof would.
        if first.wants_channel_binding:
            # RFC 5802 §6: "p" asks for a -PLUS mechanism, which is not offered.
            return Failure("SCRAM: channel-binding-not-supported")
        # RFC 5802 §5.1: acting as another identity is not offered, as with PLAIN.
        if first.authzid is not None and first.authzid != first.username:
            return Failure("SCRAM: authorization identity differs from authentication identity")
        try:
            prepared: str = saslprep(first.username)
        except ScramException as e:
            return Failure(f"SCRAM: user name refused by SASLprep: {e}")
        # Keys looked up under the spelling sent must not serve the SASLprep'd name when the
        # two differ, so such a name gets made-up keys and fails at the proof.
        if record is None or prepared != first.username:
            record = self._fake_record(prepared)
        salt, stored_key, server_key, iterations = record
        # RFC 5802 §5.1: the server appends its own nonce to the client's.
        nonce = first.nonce + secrets.token_urlsafe(24)
        server_first = f"r={nonce},s={_b64(salt)},i={iterations}"
        self._state = _AwaitingClientFinal(first, nonce, server_first, stored_key, server_key)
        return Challenge(server_first.encode("ascii"))

    def _client_final_message(self, state: _AwaitingClientFinal, response: bytes) -> Step:
        try:
            text = response.decode("utf-8")
        except UnicodeDecodeError:
            return Failure("SCRAM message is not UTF-8")
        # RFC 5802 §7: client-final-message = channel-binding "," nonce ["," extensions]
        # "," proof; the AuthMessage takes everything before ",p=" verbatim.
        without_proof, separator, proof_b64 = text.rpartition(",p=")
        attributes = without_proof.split(",")
        if (
            not separator
            or len(attributes) < 2
            or not attributes[0].startswith("c=")
            or not attributes[1].startswith("r=")
            or not all(_SCRAM_ATTRIBUTE.fullmatch(a) for a in attributes[2:])
        ):
            return Failure("SCRAM: malformed client-final-message")
        # RFC 5802 §7: without channel binding the cbind-input is the gs2-header alone.
        binding = _b64decode(attributes[0][2:])
        if binding is None or not hmac.compare_digest(
            binding, state.first.gs2_header.encode("utf-8")
        ):
            return Failure("SCRAM: channel-bindings-dont-match")
        if attributes[1][2:] != state.nonce:
            return Failure("SCRAM: nonce does not match")
        proof = _b64decode(proof_b64)
        if proof is None or len(proof) != len(state.stored_key):
            return Failure("SCRAM: invalid-proof")
        # RFC 5802 §3: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage), and the proof
        # holds when H(ClientKey) is the StoredKey.
        auth_message = f"{state.first.bare},{state.server_first},{without_proof}".encode()
        client_signature = hmac.digest(state.stored_key, auth_message, hashlib.sha256)
        client_key = bytes(p ^ s for p, s in zip(proof, client_signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), state.stored_key):
            return Failure("SCRAM: invalid-proof")
        server_signature = hmac.digest(state.server_key, auth_message, hashlib.sha256)
        return Success(state.first.username, f"v={_b64(server_signature)}".encode("ascii"))

    def _fake_record(self, username: str) -> ScramRecord:
        salt = hmac.digest(self._secret, username.encode("utf-8"), hashlib.sha256)
        # Random keys: no proof can match them.
        return salt, secrets.token_bytes(32), secrets.token_bytes(32), SCRAM_ITERATIONS


def _parse_client_first(message: bytes) -> _ClientFirst:
    """Read a client-first-message (RFC 5802 §7); raises _ScramRefused when malformed."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _ScramRefused("SCRAM message is not UTF-8") from e
    # gs2-header = gs2-cbind-flag "," [ authzid ] ","
    flag, _, rest = text.partition(",")
    authzid_field, separator, bare = rest.partition(",")
    if not separator or (flag not in ("n", "y") and _GS2_CB_FLAG.fullmatch(flag) is None):
        raise _ScramRefused("malformed gs2-header")
    authzid = None
    if authzid_field:
        if not authzid_field.startswith("a="):
            raise _ScramRefused("malformed gs2-header")
        authzid = _unescape_saslname(authzid_field[2:])
    # client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions];
    # RFC 5802 §5.1: a server that meets the reserved "m" MUST fail, as it does here.
    attributes = bare.split(",")
    if (
        len(attributes) < 2
        or not attributes[0].startswith("n=")
        or not attributes[1].startswith("r=")
        or _SCRAM_NONCE.fullmatch(attributes[1][2:]) is None
        or not all(_SCRAM_ATTRIBUTE.fullmatch(a) for a in attributes[2:])
    ):
        raise _ScramRefused("malformed client-first-message")
    return _ClientFirst(
        gs2_header=text[: len(text) - len(bare)],
        wants_channel_binding=flag.startswith("p="),
        authzid=authzid,
        username=_unescape_saslname(attributes[0][2:]),
        nonce=attributes[1][2:],
        bare=bare,
    )


def _unescape_saslname(escaped: str) -> str:
    # RFC 5802 §5.1: "," and "=" travel as "=2C" and "=3D"; any other "=" is malformed.
    if _SCRAM_SASLNAME.fullmatch(escaped) is None:
        raise _ScramRefused("malformed user name")
    return escaped.replace("=2C", ",").replace("=3D", "=")


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def new_mechanism(name: str, *, scram_secret: bytes) -> Mechanism | None:
    """A fresh mechanism for one exchange, or None when `name` is not one we implement."""
    # RFC 4422 §3.1: mechanism names are upper case; protocols compare them case-insensitively.
    match name.upper():
        case "PLAIN":
            return PlainMechanism()
        case "LOGIN":
            return LoginMechanism()
        case "SCRAM-SHA-256":
            return ScramSha256Mechanism(scram_secret)
        case _:
            return None


def mechanisms_offered(tls_active: bool, plaintext_allowed: bool) -> tuple[str, ...]:
    """The mechanisms to advertise on a connection.

    DESIGN §7: no AUTH over a cleartext connection unless the admin allows it.  That holds
    for SCRAM too: it hides the password, but a recorded exchange still allows an offline
    dictionary attack and the session that follows is readable.
    """
    if tls_active or plaintext_allowed:
        return MECHANISMS
    return ()
