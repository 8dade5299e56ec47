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

from scramp import ScramException, ScramMechanism

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
_SCRAM_SASLNAME = re.compile(r"(?:[^=,]|=2C|=3D)+")

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


class _ScramState(Enum):
    CLIENT_FIRST = auto()
    LOOKUP = auto()
    CLIENT_FINAL = auto()
    DONE = auto()


class ScramSha256Mechanism:
    """RFC 7677 SCRAM-SHA-256 (RFC 5802) without channel binding, on top of scramp.

    `secret` keys the made-up salt served for unknown users: the same user name always gets
    the same salt, so an attacker cannot tell unknown users from known ones (RFC 5802 §5.1).
    """

    name = SCRAM_MECHANISM

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._state = _ScramState.CLIENT_FIRST
        self._username = ""
        self._client_first = ""
        self._server = ScramMechanism(SCRAM_MECHANISM).make_server(self._auth_info)
        self._record: ScramRecord | None = None

    def start(self, initial_response: bytes | None) -> Step:
        if initial_response is None:
            return Challenge(b"")
        return self.feed(initial_response)

    def feed(self, response: bytes) -> Step:
        match self._state:
            case _ScramState.CLIENT_FIRST:
                return self._client_first_message(response)
            case _ScramState.CLIENT_FINAL:
                return self._client_final_message(response)
            case _ScramState.LOOKUP:
                self._state = _ScramState.DONE
                return Failure("response fed before the user was looked up")
            case _ScramState.DONE:
                return _FINISHED

    def _client_first_message(self, response: bytes) -> Step:
        self._state = _ScramState.DONE
        try:
            self._client_first = response.decode("utf-8")
        except UnicodeDecodeError:
            return Failure("SCRAM message is not UTF-8")
        username = _scram_username(self._client_first)
        if username is None:
            return Failure("malformed SCRAM client-first-message")
        self._username = username
        self._state = _ScramState.LOOKUP
        return NeedsScramRecord(username, self._resume)

    def _resume(self, record: ScramRecord | None) -> Step:
        if self._state is not _ScramState.LOOKUP:
            self._state = _ScramState.DONE
            return _FINISHED
        self._state = _ScramState.DONE
        self._record = record
        try:
            # scramp parses the whole message and calls _auth_info for the keys.
            self._server.set_client_first(self._client_first)
            server_first: str = self._server.get_server_first()
        except ScramException as e:
            return Failure(f"SCRAM: {e}")
        self._state = _ScramState.CLIENT_FINAL
        return Challenge(server_first.encode("utf-8"))

    def _client_final_message(self, response: bytes) -> Step:
        self._state = _ScramState.DONE
        try:
            self._server.set_client_final(response.decode("utf-8"))
            server_final: str = self._server.get_server_final()
        except UnicodeDecodeError:
            return Failure("SCRAM message is not UTF-8")
        except ScramException as e:
            return Failure(f"SCRAM: {e}")
        return Success(self._username, server_final.encode("utf-8"))

    def _auth_info(self, prepared_username: str) -> ScramRecord:
        # scramp hands over the SASLprep'd name; keys looked up under another spelling must
        # not be used for it, so such a name gets made-up keys and fails at the proof.
        if self._record is not None and prepared_username == self._username:
            return self._record
        return self._fake_record(prepared_username)

    def _fake_record(self, username: str) -> ScramRecord:
        salt = hmac.digest(self._secret, username.encode("utf-8"), hashlib.sha256)
        # Random keys: no proof can match them.
        return salt, secrets.token_bytes(32), secrets.token_bytes(32), SCRAM_ITERATIONS


def _scram_username(client_first: str) -> str | None:
    """The user name of a client-first-message (RFC 5802 §7), or None when there is none.

    Only what the lookup needs is read here; scramp validates the whole message afterwards.
    """
    # RFC 5802 §7: client-first-message = gs2-header client-first-message-bare, and the
    # gs2-header ends at its second comma.
    first_comma = client_first.find(",")
    second_comma = client_first.find(",", first_comma + 1) if first_comma >= 0 else -1
    if second_comma < 0:
        return None
    bare = client_first[second_comma + 1 :]
    attribute = bare.split(",", 1)[0]
    if not attribute.startswith("n="):
        return None
    escaped = attribute[2:]
    # RFC 5802 §5.1: "," and "=" travel as "=2C" and "=3D"; any other "=" is malformed.
    if _SCRAM_SASLNAME.fullmatch(escaped) is None:
        return None
    return escaped.replace("=2C", ",").replace("=3D", "=")


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
