"""One ManageSieve session (RFC 5804): the state machine with one `cmd_*` per command.

Non-authenticated → AUTHENTICATE → authenticated (→ UNAUTHENTICATE back).  Handlers raise
`SieveNo`; `_execute` turns it into `NO (CODE) "text"` in one place and ends the session with
BYE after `limits.bad_commands` refused commands in a row.  Which commands need a login is
one set, `_NEED_LOGIN`.  Script limits ([sieve] max_scripts, max_script_size) are checked
here because their answers are ManageSieve response codes.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from typing import Final

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
from postoffice.filters.sieve import SIEVE_EXTENSIONS, SieveError, check_script
from postoffice.listeners import Connection
from postoffice.managesieve import parser as p
from postoffice.store.api import ScriptActive, Store
from postoffice.store.model import AlreadyExists, InvalidName, NotFound, StoreError

# RFC 5804 §1.3 response codes.
NONEXISTENT: Final = "NONEXISTENT"
ALREADYEXISTS: Final = "ALREADYEXISTS"
ACTIVE: Final = "ACTIVE"
TRYLATER: Final = "TRYLATER"
ENCRYPT_NEEDED: Final = "ENCRYPT-NEEDED"
MAXSIZE: Final = "QUOTA/MAXSIZE"
MAXSCRIPTS: Final = "QUOTA/MAXSCRIPTS"

_SCRIPT_COMMANDS: Final = frozenset({"PUTSCRIPT", "CHECKSCRIPT"})
# RFC 5804 §2: everything but these needs an authenticated session.
_NEED_LOGIN: Final = frozenset(
    {
        p.HaveSpace,
        p.PutScript,
        p.ListScripts,
        p.SetActive,
        p.GetScript,
        p.DeleteScript,
        p.RenameScript,
        p.CheckScript,
        p.Unauthenticate,
    }
)


@dataclass(frozen=True, slots=True)
class SievePolicy:
    """What one listener offers and allows; built once per listener by the handler."""

    listener: str
    hostname: str
    starttls: bool  # STARTTLS offered while the connection is in cleartext
    line_max: int
    idle_seconds: float
    tls_handshake_seconds: float
    plaintext_networks: tuple[Network, ...]
    bad_commands: int
    max_script_size: int
    max_scripts: int
    max_redirects: int


class SieveNo(Exception):
    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class _End(Exception):
    """The session is over; `last` is the last thing sent."""

    def __init__(self, last: bytes) -> None:
        super().__init__(last)
        self.last = last


class _TooLarge(Exception):
    """A literal over the limit; it and the rest of its command have been read and dropped."""

    def __init__(self, verb: str) -> None:
        super().__init__(verb)
        self.verb = verb


class SieveSession:
    def __init__(
        self,
        conn: Connection,
        policy: SievePolicy,
        store: Store,
        authenticator: Authenticator,
        tls: ssl.SSLContext,
    ) -> None:
        self.conn = conn
        self.policy = policy
        self.store = store
        self.authenticator = authenticator
        self.tls = tls
        self.user: AuthSuccess | None = None
        self.bad_in_row = 0
        self.io = Channel(conn, policy.idle_seconds)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        self._send_capabilities(f"{self.policy.hostname} ManageSieve ready")
        try:
            while True:
                await self._execute()
        except _End as end:
            self.io.send(end.last)
        except IdleTimeout:
            self.io.send(p.bye("Disconnected for inactivity"))
        except ServerStopping:
            self.io.send(p.bye("Server shutting down", TRYLATER))
        except (Hangup, ConnectionError):
            return
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self.io.flush()

    def wake(self) -> None:
        """The server is stopping: end a wait for the next command now (from the handler)."""
        self.io.wake()

    async def _execute(self) -> None:
        try:
            command = p.parse_command(await self._read_command(idle=True))
            if type(command) in _NEED_LOGIN and self.user is None:
                raise p.BadSyntax("Authenticate first")
            await self._dispatch(command)
            self.bad_in_row = 0
        except (p.BadSyntax, LineTooLong) as e:
            text = "Command line too long" if isinstance(e, LineTooLong) else str(e)
            self._refuse(p.no(text))
        except _TooLarge as e:
            if e.verb in _SCRIPT_COMMANDS:
                # A limit, not a malformed command: it does not count towards the hang-up.
                self.io.send(p.no("Script too large", MAXSIZE))
            else:
                self._refuse(p.no("Literal too large"))
        except SieveNo as e:
            self.io.send(p.no(e.text, e.code))
        except StoreError as e:
            self.conn.log.warning("ManageSieve store error: %s", e)
            self.io.send(p.no("Temporary store error, try again", TRYLATER))
        except (_End, Hangup, IdleTimeout, ServerStopping, OSError):
            raise
        except Exception:
            self.conn.log.exception("ManageSieve command failed")
            self.io.send(p.no("Internal error", TRYLATER))

    def _refuse(self, reply: bytes) -> None:
        self.io.send(reply)
        self.bad_in_row += 1
        if self.bad_in_row >= self.policy.bad_commands:
            raise _End(p.bye("Too many invalid commands"))

    async def _dispatch(self, command: p.Command) -> None:
        match command:
            case p.Authenticate():
                await self.cmd_authenticate(command)
            case p.StartTls():
                await self.cmd_starttls(command)
            case p.Logout():
                await self.cmd_logout(command)
            case p.Capability():
                await self.cmd_capability(command)
            case p.HaveSpace():
                await self.cmd_havespace(command)
            case p.PutScript():
                await self.cmd_putscript(command)
            case p.ListScripts():
                await self.cmd_listscripts(command)
            case p.SetActive():
                await self.cmd_setactive(command)
            case p.GetScript():
                await self.cmd_getscript(command)
            case p.DeleteScript():
                await self.cmd_deletescript(command)
            case p.RenameScript():
                await self.cmd_renamescript(command)
            case p.CheckScript():
                await self.cmd_checkscript(command)
            case p.Noop():
                await self.cmd_noop(command)
            case p.Unauthenticate():
                await self.cmd_unauthenticate(command)

    # -- input ---------------------------------------------------------------------------------

    async def _read_command(self, *, idle: bool) -> list[p.Word]:
        """The words of one command, its literals read in.  One command's literals together
        may hold one script and a command line's worth besides; past that, or after a syntax
        error, the rest of the command is still read (so the next command starts where it
        should) but dropped, and _TooLarge or the BadSyntax raised."""
        budget = self.policy.max_script_size + self.policy.line_max
        segment = await self.io.line(idle=idle, limit=self.policy.line_max)
        words: list[p.Word] = []
        error: p.BadSyntax | None = None
        first = True
        while True:
            try:
                more, literal = p.scan(segment, first=first)
                words += more
            except p.BadSyntax as e:
                error = error or e
                literal = p.trailing_literal(segment)
            first = False
            if literal is None:
                break
            budget -= literal
            if error is not None or budget < 0:
                await self.io.discard(literal)
            else:
                words.append(p.String(await self.io.exactly(literal)))
            segment = await self.io.line(idle=False, limit=self.policy.line_max)
        if error is not None:
            raise error
        if budget < 0:
            raise _TooLarge(words[0].name if isinstance(words[0], p.Atom) else "")
        return words

    # -- facts about the connection ------------------------------------------------------------

    def _plaintext_allowed(self) -> bool:
        return plaintext_allowed(self.conn, self.policy.plaintext_networks)

    def _starttls_offered(self) -> bool:
        return self.policy.starttls and not self.conn.tls and self.user is None

    def _send_capabilities(self, text: str) -> None:
        # RFC 5804 §1.7.
        lines: list[tuple[str, str | None]] = [
            ("IMPLEMENTATION", "postoffice"),
            ("VERSION", "1.0"),
            ("SIEVE", " ".join(SIEVE_EXTENSIONS)),
            ("MAXREDIRECTS", str(self.policy.max_redirects)),
        ]
        if self.user is None:
            mechanisms = mechanisms_offered(self.conn.tls, self._plaintext_allowed())
            lines.append(("SASL", " ".join(mechanisms)))
            if self._starttls_offered():
                lines.append(("STARTTLS", None))
        else:
            lines.append(("OWNER", self.user.address))
        for name, value in lines:
            self.io.send(p.string(name) + (b" " + p.string(value) if value is not None else b""))
            self.io.send(b"\r\n")
        self.io.send(p.ok(text))

    # -- any state -----------------------------------------------------------------------------

    async def cmd_capability(self, cmd: p.Capability) -> None:
        self._send_capabilities("Capability completed")

    async def cmd_logout(self, cmd: p.Logout) -> None:
        # RFC 5804 §2.3: OK, then the server closes the connection.
        raise _End(p.ok("Bye"))

    async def cmd_noop(self, cmd: p.Noop) -> None:
        # RFC 5804 §2.13: a tag comes back as the TAG response code.
        code = b"TAG " + p.string(cmd.tag) if cmd.tag is not None else None
        self.io.send(p.ok("Done", code))

    # -- non-authenticated ---------------------------------------------------------------------

    async def cmd_starttls(self, cmd: p.StartTls) -> None:
        if not self._starttls_offered():
            raise SieveNo("STARTTLS is not available now")
        self.io.send(p.ok("Begin TLS negotiation"))
        await self.io.start_tls(self.tls, self.policy.tls_handshake_seconds)
        # RFC 5804 §2.2: the capabilities again, now that the SASL list may have grown.
        self._send_capabilities("TLS negotiation successful")

    async def cmd_authenticate(self, cmd: p.Authenticate) -> None:
        if self.user is not None:
            raise SieveNo("Already authenticated")
        if not (self.conn.tls or self._plaintext_allowed()):
            raise SieveNo("Use STARTTLS first", ENCRYPT_NEEDED)
        result = await self.authenticator.run_sasl(
            cmd.mechanism,
            cmd.initial,
            ip=self.conn.peer,
            tls_active=self.conn.tls,
            plaintext_allowed=self._plaintext_allowed(),
            send_challenge=self._send_challenge,
            receive_response=self._receive_sasl_response,
            success_data_allowed=True,
        )
        self._logged_in(result)

    async def _send_challenge(self, challenge: bytes) -> None:
        # RFC 5804 §2.1: a challenge is a string on a line of its own.
        self.io.send(p.string(challenge) + b"\r\n")
        await self.io.flush()

    async def _receive_sasl_response(self) -> bytes:
        """RFC 5804 §2.1: one string (quoted or literal) on a line of its own; `"*"` cancels."""
        line = await self.io.line(idle=False, limit=self.policy.line_max)
        words, literal = p.scan(b" " + line, first=False)
        if literal is not None:
            if literal > self.policy.line_max:
                raise p.BadSyntax("SASL response too long")
            words.append(p.String(await self.io.exactly(literal)))
            more, literal = p.scan(
                await self.io.line(idle=False, limit=self.policy.line_max), first=False
            )
            if more or literal is not None:
                raise p.BadSyntax("Expected one string as the SASL response")
        return p.client_string(words)

    def _logged_in(self, result: AuthResult) -> None:
        match result:
            case AuthSuccess():
                self.user = result
                self.conn.log.info("authenticated", extra={"user": result.address})
                code = None
                if result.success_data is not None:
                    code = b"SASL " + p.string(result.success_data)
                self.io.send(p.ok("Logged in", code))
            case AuthThrottled():
                raise SieveNo("Too many failed logins; try again later", TRYLATER)
            case AuthCancelled():
                raise SieveNo("Authentication cancelled")
            case AuthMalformed():
                raise SieveNo("Invalid base64 in SASL response")
            case AuthUnsupported():
                raise SieveNo("Unsupported authentication mechanism")
            case _:
                raise SieveNo("Authentication failed")

    # -- authenticated -------------------------------------------------------------------------

    def _account(self) -> int:
        assert self.user is not None  # _NEED_LOGIN guarantees it
        return self.user.account_id

    async def cmd_unauthenticate(self, cmd: p.Unauthenticate) -> None:
        # RFC 5804 §2.14.
        self.user = None
        self.io.send(p.ok("Logged out"))

    async def _check_space(self, name: str, size: int) -> None:
        if size > self.policy.max_script_size:
            raise SieveNo(f"Scripts are at most {self.policy.max_script_size} octets", MAXSIZE)
        scripts = await self.store.sieve.list(self._account())
        if len(scripts) >= self.policy.max_scripts and name not in {n for n, _ in scripts}:
            raise SieveNo(f"At most {self.policy.max_scripts} scripts", MAXSCRIPTS)

    async def cmd_havespace(self, cmd: p.HaveSpace) -> None:
        # RFC 5804 §2.5.
        await self._check_space(cmd.name, cmd.size)
        self.io.send(p.ok("Putscript would succeed"))

    async def cmd_putscript(self, cmd: p.PutScript) -> None:
        # RFC 5804 §2.6: only a valid script is stored.
        await self._check_space(cmd.name, len(cmd.content))
        text = _validated(cmd.content)
        try:
            await self.store.sieve.put(self._account(), cmd.name, text)
        except InvalidName as e:
            raise SieveNo(str(e)) from None
        self.io.send(p.ok("Script stored"))

    async def cmd_checkscript(self, cmd: p.CheckScript) -> None:
        # RFC 5804 §2.12.
        _validated(cmd.content)
        self.io.send(p.ok("Script is valid"))

    async def cmd_listscripts(self, cmd: p.ListScripts) -> None:
        # RFC 5804 §2.7.
        for name, active in await self.store.sieve.list(self._account()):
            self.io.send(p.string(name) + (b" ACTIVE" if active else b"") + b"\r\n")
        self.io.send(p.ok("Listscripts completed"))

    async def cmd_setactive(self, cmd: p.SetActive) -> None:
        # RFC 5804 §2.8: the empty name deactivates.
        try:
            await self.store.sieve.activate(self._account(), cmd.name or None)
        except NotFound:
            raise SieveNo("No such script", NONEXISTENT) from None
        self.io.send(p.ok("Script activated" if cmd.name else "Scripts deactivated"))

    async def cmd_getscript(self, cmd: p.GetScript) -> None:
        # RFC 5804 §2.9: the script as a literal, always.
        content = await self.store.sieve.get(self._account(), cmd.name)
        if content is None:
            raise SieveNo("No such script", NONEXISTENT)
        data = content.encode()
        self.io.send(b"{%d}\r\n" % len(data) + data + b"\r\n")
        self.io.send(p.ok("Getscript completed"))

    async def cmd_deletescript(self, cmd: p.DeleteScript) -> None:
        # RFC 5804 §2.10.
        try:
            await self.store.sieve.delete(self._account(), cmd.name)
        except NotFound:
            raise SieveNo("No such script", NONEXISTENT) from None
        except ScriptActive:
            raise SieveNo("The active script cannot be deleted", ACTIVE) from None
        self.io.send(p.ok("Script deleted"))

    async def cmd_renamescript(self, cmd: p.RenameScript) -> None:
        # RFC 5804 §2.11.
        try:
            await self.store.sieve.rename(self._account(), cmd.old, cmd.new)
        except NotFound:
            raise SieveNo("No such script", NONEXISTENT) from None
        except AlreadyExists:
            raise SieveNo("A script with that name exists", ALREADYEXISTS) from None
        except InvalidName as e:
            raise SieveNo(str(e)) from None
        self.io.send(p.ok("Script renamed"))


def _validated(content: bytes) -> str:
    """The script as text, once the interpreter accepts it; SieveNo with its complaint."""
    try:
        text = content.decode()
    except UnicodeDecodeError:
        raise SieveNo("Scripts must be UTF-8") from None
    try:
        check_script(text)
    except SieveError as e:
        raise SieveNo(str(e)) from None
    return text
