"""One POP3 session: the RFC 1939 state machine with one `cmd_*` per command.

AUTHORIZATION → (login, maildrop lock, snapshot) → TRANSACTION → QUIT → UPDATE.  The session
works on the snapshot `store.pop_open` took at login: message numbers, sizes and UIDL ids
stay fixed however the mailbox changes, DELE only marks, and the one store call that removes
anything is `pop_update` at QUIT.  A session that ends any other way (dropped connection,
timeout, shutdown) changes nothing but the login time LOGIN-DELAY counts from.

Handlers raise `PopError`; `_execute` turns it into `-ERR [CODE] text` in one place and ends
the session after `limits.bad_commands` refused commands in a row.  Which state a command
needs is one table, `_NEEDS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Final

from postoffice import __version__
from postoffice.auth.authenticator import (
    AuthCancelled,
    Authenticator,
    AuthMalformed,
    AuthResult,
    AuthSuccess,
    AuthThrottled,
    AuthUnsupported,
    mechanisms_offered,
)
from postoffice.channel import (
    Channel,
    Hangup,
    IdleTimeout,
    LineTooLong,
    ServerStopping,
    plaintext_allowed,
)
from postoffice.config import Network
from postoffice.context import Clock
from postoffice.listeners import Connection
from postoffice.locks import FileLock, maildrop_lock
from postoffice.pop3 import parser as p
from postoffice.pop3 import responses as r
from postoffice.store.api import Store
from postoffice.store.model import (
    PopAccountPolicy,
    PopBounds,
    PopLoginTooSoon,
    PopMaildrop,
    StoreError,
    UidSet,
)

SASL_LINE_MAX: Final = 64 * 1024  # RFC 5034 §4: responses are not bound by the 255 octets

# Response codes: RFC 2449 §8.1 and RFC 3206 §4.
IN_USE: Final = "IN-USE"
LOGIN_DELAY: Final = "LOGIN-DELAY"
SYS_TEMP: Final = "SYS/TEMP"
SYS_PERM: Final = "SYS/PERM"
AUTH: Final = "AUTH"


@dataclass(frozen=True, slots=True)
class Pop3Policy:
    """What one listener offers and allows; built once per listener by the handler."""

    listener: str
    hostname: str
    starttls: bool  # STLS offered while the connection is in cleartext
    idle_seconds: float
    tls_handshake_seconds: float
    plaintext_networks: tuple[Network, ...]
    bad_commands: int
    data_dir: Path  # the maildrop locks live under it


class PopError(Exception):
    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class _End(Exception):
    """The session is over; `last` (if any) is the last thing sent."""

    def __init__(self, last: bytes | None) -> None:
        super().__init__(last)
        self.last = last


class State(Enum):
    AUTHORIZATION = 1
    TRANSACTION = 2


_ANY: Final = frozenset(State)
_AUTHORIZATION: Final = frozenset({State.AUTHORIZATION})
_TRANSACTION: Final = frozenset({State.TRANSACTION})
# RFC 1939 §4-§7, RFC 2449 §5 (CAPA in both states), RFC 2595 §4, RFC 5034 §4.
_NEEDS: Final[dict[type, frozenset[State]]] = {
    p.User: _AUTHORIZATION,
    p.Pass: _AUTHORIZATION,
    p.Apop: _AUTHORIZATION,
    p.Auth: _AUTHORIZATION,
    p.Stls: _AUTHORIZATION,
    p.Stat: _TRANSACTION,
    p.ListMessages: _TRANSACTION,
    p.Retr: _TRANSACTION,
    p.Dele: _TRANSACTION,
    p.Noop: _TRANSACTION,
    p.Rset: _TRANSACTION,
    p.Top: _TRANSACTION,
    p.Uidl: _TRANSACTION,
}


@dataclass(slots=True, eq=False)
class Maildrop:
    """The TRANSACTION state: who logged in, the snapshot and what this session did to it."""

    user: AuthSuccess
    policy: PopAccountPolicy
    lock: FileLock
    snapshot: PopMaildrop
    deleted: set[int] = field(default_factory=set)  # message numbers
    retrieved: set[int] = field(default_factory=set)

    def message(self, msg: int) -> tuple[int, int]:
        """(uid, size) of a message number that exists and is not marked deleted."""
        if not 1 <= msg <= len(self.snapshot.messages):
            raise PopError(f"No message {msg}")
        if msg in self.deleted:
            raise PopError(f"Message {msg} is deleted")
        return self.snapshot.messages[msg - 1]

    def live(self) -> Iterable[tuple[int, int, int]]:
        """(number, uid, size) of every message not marked deleted."""
        for index, (uid, size) in enumerate(self.snapshot.messages, 1):
            if index not in self.deleted:
                yield index, uid, size

    def uidl(self, uid: int) -> str:
        # Stable across sessions and unique: a UID is never reused while UIDVALIDITY holds.
        return f"{self.snapshot.uidvalidity:08x}{uid:08x}"


class Pop3Session:
    def __init__(
        self,
        conn: Connection,
        policy: Pop3Policy,
        store: Store,
        authenticator: Authenticator,
        tls: ssl.SSLContext,
        clock: Clock,
    ) -> None:
        self.conn = conn
        self.policy = policy
        self.store = store
        self.authenticator = authenticator
        self.tls = tls
        self.clock = clock
        self.drop: Maildrop | None = None
        self.user_name: str | None = None  # given by USER, waiting for PASS
        self.bad_in_row = 0
        # RFC 1939 §7: the APOP timestamp, unique per greeting.
        self.timestamp = f"<{os.getpid()}.{secrets.token_hex(8)}@{policy.hostname}>"
        self.io = Channel(conn, policy.idle_seconds)

    @property
    def state(self) -> State:
        return State.AUTHORIZATION if self.drop is None else State.TRANSACTION

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        self.io.send(r.ok(f"POP3 server ready {self.timestamp}"))
        try:
            while True:
                line = await self._read_line()
                if line is not None:
                    await self._execute(line)
        except _End as end:
            if end.last:
                self.io.send(end.last)
        except IdleTimeout:
            # RFC 1939 §3: the autologout timer ends the session without UPDATE.
            self.io.send(r.err("Disconnected for inactivity"))
        except ServerStopping:
            self.io.send(r.err("Server shutting down", SYS_TEMP))
        except (Hangup, ConnectionError):
            return
        finally:
            if self.drop is not None:
                self.drop.lock.release()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self.io.flush()

    def wake(self) -> None:
        """The server is stopping: end a wait for the next command now (from the handler)."""
        self.io.wake()

    async def _execute(self, line: bytes) -> None:
        try:
            command = p.parse_command(line)
            if self.state not in _NEEDS.get(type(command), _ANY):
                verb = line.split(maxsplit=1)[0].upper().decode()
                raise p.BadSyntax(f"{verb} is not allowed in this state")
            await self._dispatch(command)
            self.bad_in_row = 0
        except p.BadSyntax as e:
            self.io.send(r.err(str(e)))
            self.bad_in_row += 1
            if self.bad_in_row >= self.policy.bad_commands:
                raise _End(r.err("Too many invalid commands")) from None
        except PopError as e:
            self.io.send(r.err(e.text, e.code))
        except StoreError as e:
            self.conn.log.warning("POP3 store error: %s", e)
            self.io.send(r.err("Temporary store error, try again", SYS_TEMP))
        except (_End, Hangup, IdleTimeout, ServerStopping, OSError):
            raise
        except Exception:
            self.conn.log.exception("POP3 command failed")
            self.io.send(r.err("Internal error", SYS_TEMP))

    async def _dispatch(self, command: p.Command) -> None:
        match command:
            case p.Capa():
                await self.cmd_capa(command)
            case p.Quit():
                await self.cmd_quit(command)
            case p.Stls():
                await self.cmd_stls(command)
            case p.User():
                await self.cmd_user(command)
            case p.Pass():
                await self.cmd_pass(command)
            case p.Apop():
                await self.cmd_apop(command)
            case p.Auth():
                await self.cmd_auth(command)
            case p.Stat():
                await self.cmd_stat(command)
            case p.ListMessages():
                await self.cmd_list(command)
            case p.Uidl():
                await self.cmd_uidl(command)
            case p.Retr():
                await self.cmd_retr(command)
            case p.Top():
                await self.cmd_top(command)
            case p.Dele():
                await self.cmd_dele(command)
            case p.Rset():
                await self.cmd_rset(command)
            case p.Noop():
                await self.cmd_noop(command)

    # -- input ---------------------------------------------------------------------------------

    async def _read_line(self) -> bytes | None:
        try:
            return await self.io.line(idle=True, limit=p.MAX_LINE)
        except LineTooLong:
            # RFC 2449 §4: 255 octets including the CRLF.
            self.io.send(r.err("Command line too long"))
            self.bad_in_row += 1
            if self.bad_in_row >= self.policy.bad_commands:
                raise _End(r.err("Too many invalid commands")) from None
            return None

    # -- facts about the connection ------------------------------------------------------------

    def _plaintext_allowed(self) -> bool:
        return plaintext_allowed(self.conn, self.policy.plaintext_networks)

    def _secure_enough(self) -> bool:
        """DESIGN §7: no passwords (nor APOP digests) over cleartext outside allowed networks."""
        return self.conn.tls or self._plaintext_allowed()

    def _stls_offered(self) -> bool:
        return self.policy.starttls and not self.conn.tls and self.drop is None

    async def _capabilities(self) -> list[str]:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.drop is None:
            if self._secure_enough():
                caps.append("USER")
            mechanisms = mechanisms_offered(self.conn.tls, self._plaintext_allowed())
            if mechanisms:
                caps.append("SASL " + " ".join(mechanisms))
            if self._stls_offered():
                caps.append("STLS")
            caps += _policy_caps(await self.store.pop_bounds())
        else:
            account = self.drop.policy
            caps += _policy_caps(PopBounds(account.expire_days, account.login_delay, False))
        caps.append(f"IMPLEMENTATION postoffice-{__version__}")
        return caps

    # -- any state -----------------------------------------------------------------------------

    async def cmd_capa(self, cmd: p.Capa) -> None:
        caps = await self._capabilities()
        self.io.send(r.ok("Capability list follows") + r.multiline(caps))

    async def cmd_quit(self, cmd: p.Quit) -> None:
        drop = self.drop
        if drop is None:
            raise _End(r.ok("Bye"))
        deleted = set(drop.deleted)
        if drop.policy.expire_days == 0:
            # RFC 2449 §6.7: EXPIRE 0 means an implicit DELE for every message RETR'd.
            deleted |= drop.retrieved
        messages = drop.snapshot.messages
        try:
            removed = await self.store.pop_update(
                drop.snapshot.mailbox_id,
                UidSet.of([messages[n - 1][0] for n in deleted]),
                UidSet.of([messages[n - 1][0] for n in drop.retrieved]),
                self.clock.now(),
            )
        except StoreError as e:
            # RFC 1939 §6: -ERR when UPDATE fails; nothing was removed (one transaction).
            self.conn.log.warning("POP3 update failed: %s", e)
            raise _End(r.err("Messages could not be deleted, try again", SYS_TEMP)) from None
        self.conn.log.info("pop3 update", extra={"deleted": len(removed)})
        raise _End(r.ok(f"Bye, {len(removed)} messages deleted"))

    # -- AUTHORIZATION -------------------------------------------------------------------------

    async def cmd_stls(self, cmd: p.Stls) -> None:
        if not self._stls_offered():
            raise PopError("STLS is not available now")
        self.io.send(r.ok("Begin TLS negotiation"))
        # RFC 2595 §4: nothing sent before the handshake counts; forget any USER too.
        self.user_name = None
        await self.io.start_tls(self.tls, self.policy.tls_handshake_seconds)

    async def cmd_user(self, cmd: p.User) -> None:
        if not self._secure_enough():
            raise PopError("Plaintext authentication disallowed without TLS", AUTH)
        self.user_name = cmd.name
        self.io.send(r.ok("Send your password"))

    async def cmd_pass(self, cmd: p.Pass) -> None:
        name, self.user_name = self.user_name, None
        if name is None:
            raise p.BadSyntax("USER first")
        result = await self.authenticator.authenticate_password(name, cmd.password, self.conn.peer)
        await self._logged_in(result)

    async def cmd_apop(self, cmd: p.Apop) -> None:
        if not self._secure_enough():
            raise PopError("APOP disallowed without TLS", AUTH)

        async def check() -> AuthSuccess | None:
            account = await self.store.get_pop_policy(cmd.name)
            secret = account.apop_secret if account is not None else None
            # RFC 1939 §7: MD5 of the greeting's timestamp followed by the shared secret; an
            # account without one is compared against a random secret, in the same time.
            expected = hashlib.md5(
                (self.timestamp + (secret or secrets.token_hex(16))).encode(),
                usedforsecurity=False,
            ).hexdigest()
            if account is None or secret is None or not hmac.compare_digest(expected, cmd.digest):
                return None
            return AuthSuccess(account.account_id, account.address)

        result = await self.authenticator.authenticate_with(cmd.name, self.conn.peer, check, "APOP")
        await self._logged_in(result)

    async def cmd_auth(self, cmd: p.Auth) -> None:
        if cmd.mechanism is None:
            # Not in RFC 5034, but clients (fetchmail among them) probe with a bare AUTH.
            mechanisms = mechanisms_offered(self.conn.tls, self._plaintext_allowed())
            self.io.send(r.ok("Supported mechanisms follow") + r.multiline(mechanisms))
            return
        result = await self.authenticator.run_sasl(
            cmd.mechanism,
            cmd.initial,
            ip=self.conn.peer,
            tls_active=self.conn.tls,
            plaintext_allowed=self._plaintext_allowed(),
            send_challenge=self._send_challenge,
            receive_response=self._receive_sasl_line,
        )
        await self._logged_in(result)

    async def _send_challenge(self, challenge: bytes) -> None:
        # RFC 5034 §4: "+ " and the base64 challenge.
        self.io.send(b"+ " + challenge + b"\r\n")
        await self.io.flush()

    async def _receive_sasl_line(self) -> bytes:
        try:
            line = await self.io.line(idle=False, limit=SASL_LINE_MAX)
        except LineTooLong:
            raise PopError("SASL response too long", AUTH) from None
        return line.rstrip(b"\r\n")

    async def _logged_in(self, result: AuthResult) -> None:
        match result:
            case AuthSuccess():
                await self._open_maildrop(result)
            case AuthThrottled():
                raise PopError("Too many failed logins; try again later", SYS_TEMP)
            case AuthCancelled():
                raise PopError("Authentication cancelled")
            case AuthMalformed():
                raise p.BadSyntax("Invalid base64 in SASL response")
            case AuthUnsupported():
                raise PopError("Unsupported authentication mechanism")
            case _:
                raise PopError("Invalid credentials", AUTH)

    async def _open_maildrop(self, user: AuthSuccess) -> None:
        account = await self.store.get_pop_policy(user.address)
        if account is None or not account.enabled:
            raise PopError("POP3 access is disabled for this account", AUTH)
        lock = maildrop_lock(self.policy.data_dir, user.account_id)
        if lock is None:
            raise PopError("Maildrop is in use by another session", IN_USE)
        try:
            opened = await self.store.pop_open(user.account_id, self.clock.now())
        except BaseException:
            lock.release()
            raise
        if isinstance(opened, PopLoginTooSoon):
            lock.release()
            raise PopError(
                f"Logged in too recently; try again in {opened.retry_after} seconds", LOGIN_DELAY
            )
        self.drop = Maildrop(user, account, lock, opened)
        total = sum(size for _, size in opened.messages)
        self.conn.log.info(
            "authenticated",
            extra={
                "user": user.address,
                "messages": len(opened.messages),
                "expired": opened.expired,
            },
        )
        self.io.send(r.ok(f"Logged in, {len(opened.messages)} messages ({total} octets)"))

    # -- TRANSACTION ---------------------------------------------------------------------------

    def _drop(self) -> Maildrop:
        assert self.drop is not None  # the command table guarantees it
        return self.drop

    async def cmd_stat(self, cmd: p.Stat) -> None:
        live = list(self._drop().live())
        self.io.send(r.ok(f"{len(live)} {sum(size for _, _, size in live)}"))

    async def cmd_list(self, cmd: p.ListMessages) -> None:
        # Sizes are those stored, which for mail received over SMTP is the exact CRLF form
        # RETR sends before dot-stuffing (RFC 1939 §11).
        drop = self._drop()
        if cmd.msg is not None:
            _, size = drop.message(cmd.msg)
            self.io.send(r.ok(f"{cmd.msg} {size}"))
            return
        live = list(drop.live())
        self.io.send(
            r.ok(f"{len(live)} messages") + r.multiline(f"{n} {size}" for n, _, size in live)
        )

    async def cmd_uidl(self, cmd: p.Uidl) -> None:
        drop = self._drop()
        if cmd.msg is not None:
            uid, _ = drop.message(cmd.msg)
            self.io.send(r.ok(f"{cmd.msg} {drop.uidl(uid)}"))
            return
        self.io.send(
            r.ok("Unique-id listing follows")
            + r.multiline(f"{n} {drop.uidl(uid)}" for n, uid, _ in drop.live())
        )

    async def _read(self, msg: int) -> bytes:
        drop = self._drop()
        uid, _ = drop.message(msg)
        raw = await self.store.read_message(drop.snapshot.mailbox_id, uid)
        if raw is None:
            raise PopError(f"Message {msg} was removed by another session", SYS_PERM)
        return raw

    async def cmd_retr(self, cmd: p.Retr) -> None:
        raw = await self._read(cmd.msg)
        self._drop().retrieved.add(cmd.msg)
        await self._stream(f"{len(raw)} octets", raw)

    async def cmd_top(self, cmd: p.Top) -> None:
        raw = await self._read(cmd.msg)
        await self._stream("Top of message follows", r.top(raw, cmd.lines))

    async def _stream(self, status: str, data: bytes) -> None:
        """+OK and `data` dot-stuffed, written piece by piece with a drain between pieces."""
        self.io.send(r.ok(status))
        await self.io.flush()
        for piece in r.dot_stuffed(data):
            self.io.send(piece)
            await self.io.flush()

    async def cmd_dele(self, cmd: p.Dele) -> None:
        drop = self._drop()
        drop.message(cmd.msg)
        drop.deleted.add(cmd.msg)
        self.io.send(r.ok(f"Message {cmd.msg} deleted"))

    async def cmd_rset(self, cmd: p.Rset) -> None:
        drop = self._drop()
        drop.deleted.clear()
        live = list(drop.live())
        self.io.send(r.ok(f"{len(live)} messages ({sum(s for _, _, s in live)} octets)"))

    async def cmd_noop(self, cmd: p.Noop) -> None:
        self.io.send(r.ok("Done"))


def _policy_caps(bounds: PopBounds) -> list[str]:
    """EXPIRE and LOGIN-DELAY (RFC 2449 §6.5, §6.7); USER when the value may differ per
    account, so a client knows to ask CAPA again after login."""
    user = " USER" if bounds.per_user else ""
    expire = "NEVER" if bounds.min_expire_days is None else str(bounds.min_expire_days)
    return [f"EXPIRE {expire}{user}", f"LOGIN-DELAY {bounds.max_login_delay}{user}"]
