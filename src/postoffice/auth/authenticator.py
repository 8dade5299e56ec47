"""Login checks for every protocol front-end: password logins and whole SASL exchanges.

The front-end knows only its framing (`334 ` / `+ ` and CRLF); everything else — base64,
mechanism state, throttling, argon2 off the event loop, uniform timing for unknown users —
happens here, once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from postoffice.auth.passwords import hash_password, parse_scram_record, verify_password
from postoffice.auth.sasl import (
    MECHANISMS,
    Challenge,
    Failure,
    NeedsPasswordCheck,
    NeedsScramRecord,
    SaslCancelled,
    SaslSyntaxError,
    ScramRecord,
    Step,
    Success,
    decode_sasl_response,
    encode_challenge,
    mechanisms_offered,
    new_mechanism,
)
from postoffice.auth.throttle import LoginThrottle
from postoffice.metrics import Metrics
from postoffice.store.model import Credentials

__all__ = [
    "MECHANISMS",
    "AuthCancelled",
    "AuthFailure",
    "AuthMalformed",
    "AuthResult",
    "AuthSuccess",
    "AuthThrottled",
    "AuthUnsupported",
    "Authenticator",
    "CredentialsLookup",
    "mechanisms_offered",
]

log = logging.getLogger(__name__)

CredentialsLookup = Callable[[str], Awaitable[Credentials | None]]


@dataclass(frozen=True, slots=True)
class AuthSuccess:
    account_id: int
    address: str  # as the store spells it, whatever case the client typed
    # Base64 data to send with the success reply; set only when the caller allowed it
    # (ManageSieve's `OK (SASL "...")`), otherwise it already went out as a challenge.
    success_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Wrong credentials or a malformed mechanism message; `reason` is for the log only."""

    reason: str


@dataclass(frozen=True, slots=True)
class AuthThrottled:
    retry_after: float  # seconds


@dataclass(frozen=True, slots=True)
class AuthCancelled:
    """The client sent `*` (SMTP 501, IMAP BAD)."""


@dataclass(frozen=True, slots=True)
class AuthMalformed:
    """A client response was not base64 (SMTP 501, IMAP BAD)."""

    reason: str


@dataclass(frozen=True, slots=True)
class AuthUnsupported:
    """Unknown mechanism, or one not offered on this connection (SMTP 504, IMAP NO)."""

    mechanism: str


AuthResult = (
    AuthSuccess | AuthFailure | AuthThrottled | AuthCancelled | AuthMalformed | AuthUnsupported
)

_INVALID = "invalid credentials"


class Authenticator:
    def __init__(
        self,
        credentials_lookup: CredentialsLookup,
        throttle: LoginThrottle,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        """`credentials_lookup` is the store's `get_credentials`; `clock` the monotonic clock
        the throttle also uses; `sleep` waits out throttle delays (a test passes a recorder)."""
        self._lookup = credentials_lookup
        self._throttle = throttle
        self._clock = clock
        self._sleep = sleep
        self._metrics = metrics if metrics is not None else Metrics()
        # Unknown users are verified against this, so they cost the same argon2 time as
        # known ones and the response time does not reveal which accounts exist.
        self._dummy_hash = hash_password(secrets.token_urlsafe(24))
        self._scram_secret = secrets.token_bytes(32)

    async def authenticate_password(
        self, address: str, password: str, ip: str
    ) -> AuthSuccess | AuthFailure | AuthThrottled:
        """Check a user name and password (IMAP LOGIN, POP3 USER/PASS, PLAIN, LOGIN, web)."""
        throttled = await self._wait_turn(ip, address)
        if throttled is not None:
            return throttled
        started = self._clock()
        credentials = await self._lookup(address)
        stored_hash = credentials.password_hash if credentials else self._dummy_hash
        # argon2 takes ~20 ms of CPU: never on the event loop.
        matches = await asyncio.to_thread(verify_password, stored_hash, password)
        if credentials is None or not matches:
            return self._failed(ip, address, _INVALID)
        self._throttle.record_success(ip, address)
        log.debug("login ok for %s from %s in %.3fs", address, ip, self._clock() - started)
        return AuthSuccess(credentials.account_id, credentials.address)

    async def authenticate_with(
        self,
        address: str,
        ip: str,
        check: Callable[[], Awaitable[AuthSuccess | None]],
        method: str,
    ) -> AuthSuccess | AuthFailure | AuthThrottled:
        """A protocol's own credential check (POP3 APOP) under the same throttle and logging
        as every other login; `check` returns None when the credentials do not match."""
        throttled = await self._wait_turn(ip, address)
        if throttled is not None:
            return throttled
        success = await check()
        if success is None:
            return self._failed(ip, address, f"{method} mismatch")
        self._throttle.record_success(ip, address)
        return success

    async def run_sasl(
        self,
        mechanism: str,
        initial_response: bytes | None,
        *,
        ip: str,
        tls_active: bool,
        plaintext_allowed: bool,
        send_challenge: Callable[[bytes], Awaitable[None]],
        receive_response: Callable[[], Awaitable[bytes]],
        success_data_allowed: bool = False,
    ) -> AuthResult:
        """Drive one SASL exchange to its end.

        `initial_response` is the initial response as sent on the wire (base64, or `=` for
        empty; None when the client sent none).  `send_challenge` gets a base64 challenge to
        frame and send; `receive_response` returns the client's next line without CRLF and
        enforces the protocol's timeout and line limit.  `success_data_allowed`: the protocol
        can carry data in its success reply (ManageSieve); otherwise SCRAM's final message goes
        out as one more challenge, answered by an empty response (RFC 4954 §4).
        """
        name = mechanism.upper()
        mech = new_mechanism(name, scram_secret=self._scram_secret)
        if mech is None or name not in mechanisms_offered(tls_active, plaintext_allowed):
            return AuthUnsupported(mechanism)
        # A locked-out network is refused before any exchange; the delay is applied once the
        # account is known, so it covers both counters.
        decision = self._throttle.check(ip, None)
        if not decision.allowed:
            return AuthThrottled(decision.retry_after)

        username: str | None = None
        credentials: Credentials | None = None
        try:
            initial = None if initial_response is None else decode_sasl_response(initial_response)
            step: Step = mech.start(initial)
            while True:
                match step:
                    case Challenge(data):
                        await send_challenge(encode_challenge(data))
                        step = mech.feed(decode_sasl_response(await receive_response()))
                    case NeedsPasswordCheck(authcid, password):
                        return await self.authenticate_password(authcid, password, ip)
                    case NeedsScramRecord(name_sent, resume):
                        username = name_sent
                        throttled = await self._wait_turn(ip, username)
                        if throttled is not None:
                            return throttled
                        credentials = await self._lookup(username)
                        step = resume(_scram_record(credentials))
                    case Success(authcid, server_data):
                        if credentials is None:
                            # Only SCRAM ends in Success, and only with keys from a lookup.
                            return self._failed(ip, authcid, _INVALID)
                        return await self._succeeded(
                            ip,
                            authcid,
                            credentials,
                            server_data,
                            success_data_allowed,
                            send_challenge,
                            receive_response,
                        )
                    case Failure(reason):
                        # Counted against the name even when it does not exist: otherwise only
                        # real accounts would ever lock, and locking would reveal them.
                        return self._failed(ip, username, reason)
        except SaslCancelled:
            return AuthCancelled()
        except SaslSyntaxError as e:
            return AuthMalformed(str(e))

    async def _succeeded(
        self,
        ip: str,
        authcid: str,
        credentials: Credentials,
        server_data: bytes | None,
        success_data_allowed: bool,
        send_challenge: Callable[[bytes], Awaitable[None]],
        receive_response: Callable[[], Awaitable[bytes]],
    ) -> AuthResult:
        success_data = None if server_data is None else encode_challenge(server_data)
        if success_data is not None and not success_data_allowed:
            await send_challenge(success_data)
            # RFC 4954 §4: the client answers the last challenge with an empty response.
            if decode_sasl_response(await receive_response()):
                return AuthMalformed("expected an empty response after the final challenge")
            success_data = None
        self._throttle.record_success(ip, authcid)
        return AuthSuccess(credentials.account_id, credentials.address, success_data)

    async def _wait_turn(self, ip: str, account: str | None) -> AuthThrottled | None:
        decision = self._throttle.check(ip, account)
        if not decision.allowed:
            log.info("login throttled for %s from %s", account, ip)
            return AuthThrottled(decision.retry_after)
        if decision.delay > 0:
            await self._sleep(decision.delay)
        return None

    def _failed(self, ip: str, account: str | None, reason: str) -> AuthFailure:
        self._throttle.record_failure(ip, account)
        self._metrics.auth_failures += 1
        # Logged at INFO with the client address so fail2ban-style tools can act on it.
        log.info("login failed for %s from %s: %s", account, ip, reason)
        return AuthFailure(reason)


def _scram_record(credentials: Credentials | None) -> ScramRecord | None:
    if credentials is None or credentials.scram_sha256 is None:
        return None
    try:
        return parse_scram_record(credentials.scram_sha256)
    except ValueError:
        log.warning("unreadable SCRAM keys for %s", credentials.address)
        return None
