"""One IMAP session: the RFC 9051 state machine with one `cmd_*` per command.

The session owns its input buffer (so COMPRESS=DEFLATE can sit between the socket and the
parser) and queues its output, writing it before every wait for input.  Handlers raise
`No` / `Bad`; `_execute` turns them (and store errors) into the tagged reply in one place
and hangs up after `limits.bad_commands` refusals in a row.  Which state a command needs is
one table, `_NEEDS`, not a check in each handler.

While IDLE the session has no task of its own waiting on the mailbox: the event bus calls
`_on_event` synchronously when a change commits, which writes the untagged responses
straight to the transport.  That keeps an idle connection down to its socket, its
StreamReader and the coroutine blocked in `read` (issue 4: 10,000 idle clients per process).
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import re
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Final

from postoffice import __version__
from postoffice.auth.authenticator import (
    AuthCancelled,
    Authenticator,
    AuthFailure,
    AuthMalformed,
    AuthSuccess,
    AuthThrottled,
    AuthUnsupported,
)
from postoffice.auth.sasl import mechanisms_offered
from postoffice.channel import (
    BadCompressedData,
    Channel,
    Hangup,
    IdleTimeout,
    LineTooLong,
    ServerStopping,
    plaintext_allowed,
)
from postoffice.config import Network
from postoffice.filters.junk.training import BackgroundTraining, training_for_transfer
from postoffice.imap import commands as c
from postoffice.imap import fetch as f
from postoffice.imap import responses as w
from postoffice.imap import sort as sorting
from postoffice.imap import thread as threading_
from postoffice.imap import utf7
from postoffice.imap.parser import CommandAssembler, LiteralTooLarge, ParseError
from postoffice.imap.selected import BadSet, Options, RecentClaims, SelectedMailbox
from postoffice.listeners import Connection
from postoffice.store import search as s
from postoffice.store.api import Store
from postoffice.store.events import Expunged, FlagsChanged, MessagesAdded
from postoffice.store.model import (
    FLAG_NAMES,
    AlreadyExists,
    AppendTarget,
    Entry,
    Flag,
    InvalidName,
    Mailbox,
    NotFound,
    QuotaExceeded,
    SpecialUse,
    StoreError,
    StoreMode,
    UidSet,
)
from postoffice.store.names import compile_list_pattern, is_inbox

FLUSH_AT: Final = 256 * 1024  # queued output written out mid-command (large FETCHes)
SASL_LINE_MAX: Final = 64 * 1024
FETCH_CHUNK: Final = 1000  # messages per store.fetch during one FETCH command
READ_BATCH: Final = 256  # messages read from the store per round trip during FETCH
READ_BATCH_BYTES: Final = 4 << 20

# RFC 9051 §9: tag = 1*<any ASTRING-CHAR except "+">
_TAG: Final = re.compile(rb"([\x21\x23-\x24\x26-\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+) ")
_FLAG_BY_NAME: Final = {name.upper(): flag for flag, name in FLAG_NAMES.items()}
_ENABLEABLE: Final = ("CONDSTORE", "QRESYNC", "IMAP4REV2", "UTF8=ACCEPT")
_STATUS_ITEMS: Final = frozenset(
    {"MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "RECENT"}
    | {"HIGHESTMODSEQ", "APPENDLIMIT"}
)
_SPECIAL_USE: Final = {use.value.upper(): use for use in SpecialUse}


@dataclass(frozen=True, slots=True)
class ImapPolicy:
    """What one listener offers and allows; built once per listener by the handler."""

    listener: str
    hostname: str
    starttls: bool  # STARTTLS offered while the connection is in cleartext
    line_max: int
    literal_max: int
    append_max: int
    idle_seconds: float
    tls_handshake_seconds: float
    plaintext_networks: tuple[Network, ...]
    bad_commands: int


class No(Exception):
    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Bad(No):
    pass


class _End(Exception):
    """The session is over; `bye` (if any) is the last thing sent."""

    def __init__(self, bye: str | None) -> None:
        super().__init__(bye)
        self.bye = bye


class State(Enum):
    NOT_AUTHENTICATED = 1
    AUTHENTICATED = 2
    SELECTED = 3


_ANY: Final = frozenset(State)
_NEEDS: Final[dict[type, frozenset[State]]] = {
    c.StartTls: frozenset({State.NOT_AUTHENTICATED}),
    c.Authenticate: frozenset({State.NOT_AUTHENTICATED}),
    c.Login: frozenset({State.NOT_AUTHENTICATED}),
    **{
        kind: frozenset({State.AUTHENTICATED, State.SELECTED})
        for kind in (
            c.Enable,
            c.Select,
            c.Create,
            c.Delete,
            c.Rename,
            c.Subscribe,
            c.ListMailboxes,
            c.Namespace,
            c.Status,
            c.Append,
            c.Idle,
            c.GetQuota,
            c.GetQuotaRoot,
            c.SetQuota,
            c.Compress,
        )
    },
    **{
        kind: frozenset({State.SELECTED})
        for kind in (
            c.Check,
            c.Close,
            c.Unselect,
            c.Expunge,
            c.Search,
            c.Fetch,
            c.StoreFlags,
            c.Copy,
            c.Sort,
            c.Thread,
        )
    },
}


class ImapSession:
    def __init__(
        self,
        conn: Connection,
        policy: ImapPolicy,
        store: Store,
        authenticator: Authenticator,
        tls: ssl.SSLContext,
        recent_claims: RecentClaims,
        junk_training: BackgroundTraining,
    ) -> None:
        self.conn = conn
        self.recent_claims = recent_claims
        self.policy = policy
        self.store = store
        self.authenticator = authenticator
        self.tls = tls
        self.user: AuthSuccess | None = None
        self.selected: SelectedMailbox | None = None
        self.options = Options()
        self.utf8 = False
        self.bad_in_row = 0
        self.io = Channel(conn, policy.idle_seconds)
        self.junk_training = junk_training
        self._assembler = self._new_assembler()

    def _new_assembler(self) -> CommandAssembler:
        return CommandAssembler(
            max_line=self.policy.line_max,
            max_literal=self.policy.literal_max,
            max_append=self.policy.append_max,
            # RFC 9051 §4.3 and RFC 6855 §3: UTF-8 in quoted strings once either is enabled.
            utf8=self.utf8 or self.options.rev2,
        )

    @property
    def state(self) -> State:
        if self.user is None:
            return State.NOT_AUTHENTICATED
        return State.AUTHENTICATED if self.selected is None else State.SELECTED

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        self.io.send(b"* OK [CAPABILITY %b] %b ready\r\n" % (self._capabilities(), self._host()))
        try:
            while True:
                command = await self._read_command()
                if command is not None:
                    await self._execute(command)
        except _End as end:
            if end.bye:
                self.io.send(b"* BYE " + end.bye.encode() + b"\r\n")
        except IdleTimeout:
            # RFC 9051 §5.4: the autologout timer (at least 30 minutes by default).
            self.io.send(b"* BYE Autologout; idle for too long\r\n")
        except ServerStopping:
            self.io.send(b"* BYE Server shutting down\r\n")
        except BadCompressedData:
            self.io.send(b"* BYE Invalid compressed data\r\n")
        except (Hangup, ConnectionError):
            return
        finally:
            if self.selected is not None:
                self.selected.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self.io.flush()

    def wake(self) -> None:
        """The server is stopping: end a wait for the next command now (from the handler)."""
        self.io.wake()

    def _host(self) -> bytes:
        return self.policy.hostname.encode()

    async def _execute(self, command: c.Command) -> None:
        try:
            allowed = _NEEDS.get(type(command), _ANY)
            if self.state not in allowed:
                raise Bad(f"{_name(command)} is not allowed in this state", "CLIENTBUG")
            await self._dispatch(command)
            self.bad_in_row = 0
        except BadSet as e:
            self._refuse(command.tag, Bad(str(e), "CLIENTBUG"))
        except No as e:
            self._refuse(command.tag, e)
        except NotFound as e:
            self._refuse(command.tag, No(str(e), "NONEXISTENT"))
        except AlreadyExists as e:
            self._refuse(command.tag, No(str(e), "ALREADYEXISTS"))
        except InvalidName as e:
            self._refuse(command.tag, No(str(e), "CANNOT"))
        except QuotaExceeded as e:
            self._refuse(command.tag, No(str(e), "OVERQUOTA"))
        except StoreError as e:
            self._refuse(command.tag, No(str(e), "SERVERBUG"))
        except LineTooLong:
            self._refuse(command.tag, Bad("Line too long", "TOOBIG"))
        except (_End, Hangup, IdleTimeout, ServerStopping, BadCompressedData, OSError):
            raise
        except Exception:
            self.conn.log.exception("IMAP command failed")
            self._refuse(
                command.tag, No("Internal error, the command was not completed", "SERVERBUG")
            )

    async def _dispatch(self, command: c.Command) -> None:
        match command:
            case c.Capability():
                await self.cmd_capability(command)
            case c.Noop() | c.Check():
                await self.cmd_noop(command)
            case c.Logout():
                await self.cmd_logout(command)
            case c.StartTls():
                await self.cmd_starttls(command)
            case c.Authenticate():
                await self.cmd_authenticate(command)
            case c.Login():
                await self.cmd_login(command)
            case c.Enable():
                await self.cmd_enable(command)
            case c.Id():
                await self.cmd_id(command)
            case c.Select():
                await self.cmd_select(command)
            case c.Create():
                await self.cmd_create(command)
            case c.Delete():
                await self.cmd_delete(command)
            case c.Rename():
                await self.cmd_rename(command)
            case c.Subscribe():
                await self.cmd_subscribe(command)
            case c.ListMailboxes():
                await self.cmd_list(command)
            case c.Namespace():
                await self.cmd_namespace(command)
            case c.Status():
                await self.cmd_status(command)
            case c.Append():
                await self.cmd_append(command)
            case c.Idle():
                await self.cmd_idle(command)
            case c.Close():
                await self.cmd_close(command)
            case c.Unselect():
                await self.cmd_unselect(command)
            case c.Expunge():
                await self.cmd_expunge(command)
            case c.Search():
                await self.cmd_search(command)
            case c.Fetch():
                await self.cmd_fetch(command)
            case c.StoreFlags():
                await self.cmd_store(command)
            case c.Copy():
                await self.cmd_copy(command)
            case c.Sort():
                await self.cmd_sort(command)
            case c.Thread():
                await self.cmd_thread(command)
            case c.GetQuota():
                await self.cmd_getquota(command)
            case c.GetQuotaRoot():
                await self.cmd_getquotaroot(command)
            case c.SetQuota():
                await self.cmd_setquota(command)
            case c.Compress():
                await self.cmd_compress(command)

    # -- replies -------------------------------------------------------------------------------

    def _ok(
        self, tag: str, text: str, code: str | None = None, *, allow_expunge: bool = True
    ) -> None:
        # RFC 9051 §7.5.1: no EXPUNGE in the response to FETCH, STORE or SEARCH by number.
        self._updates(allow_expunge=allow_expunge)
        self._tagged(tag, "OK", text, code)

    def _tagged(self, tag: str, status: str, text: str, code: str | None) -> None:
        bracket = f"[{code}] " if code else ""
        self.io.send(f"{tag} {status} {bracket}{text}\r\n".encode())

    def _refuse(self, tag: str | None, error: No) -> None:
        kind = "BAD" if isinstance(error, Bad) else "NO"
        if isinstance(error, Bad) or tag is None:
            self.bad_in_row += 1
        self._updates(allow_expunge=False)
        self._tagged(tag or "*", kind, error.message, error.code)
        if self.bad_in_row >= self.policy.bad_commands:
            raise _End("Too many invalid commands")

    def _updates(self, allow_expunge: bool) -> None:
        """Queue what changed in the selected mailbox since the last look (RFC 9051 §7)."""
        selected = self.selected
        if selected is None:
            return
        events = selected.subscription.pending()
        selected.absorb(events)
        for line in selected.updates(events, self.options, allow_expunge):
            self.io.send(line)

    async def _read_command(self) -> c.Command | None:
        """The next command, its literals read; None when it was refused (already answered)."""
        assembler = self._assembler
        try:
            line = await self.io.line(idle=True, limit=self.policy.line_max)
            while (wanted := assembler.feed_line(line)) is not None:
                if wanted.synchronizing:
                    self.io.send(b"+ Ready for literal data\r\n")
                assembler.feed_literal(await self.io.exactly(wanted.size))
                line = await self.io.line(idle=False, limit=self.policy.line_max)
            return assembler.finish()
        except LineTooLong as e:
            assembler.reset()
            tag = _TAG.match(e.head)
            self._refuse(tag[1].decode() if tag else None, Bad("Command line too long", "TOOBIG"))
        except LiteralTooLarge as e:
            assembler.reset()
            if not e.synchronizing:
                # RFC 7888 §4: a non-synchronizing literal is on its way whatever we say; the
                # rest of the command cannot be told from a new one, so the session ends.
                await self.io.discard(e.size)
                self._tagged(e.tag or "*", "NO", e.message, "TOOBIG")
                raise _End("Literal too large") from None
            self._refuse(e.tag, No(e.message, "TOOBIG"))
        except ParseError as e:
            assembler.reset()
            if e.code == "BADCHARSET":
                # RFC 9051 §6.4.4: an unsupported charset is a NO naming the ones we have.
                self._refuse(e.tag, No(e.message, "BADCHARSET (US-ASCII UTF-8)"))
            else:
                self._refuse(e.tag, Bad(e.message, e.code))
        return None

    # -- facts about the connection ------------------------------------------------------------

    def _plaintext_allowed(self) -> bool:
        return plaintext_allowed(self.conn, self.policy.plaintext_networks)

    def _starttls_offered(self) -> bool:
        return self.policy.starttls and not self.conn.tls

    def _capabilities(self) -> bytes:
        caps = ["IMAP4rev1", "IMAP4rev2"]
        if self.user is None:
            if self._starttls_offered():
                caps.append("STARTTLS")
            mechanisms = mechanisms_offered(self.conn.tls, self._plaintext_allowed())
            if not mechanisms:
                caps.append("LOGINDISABLED")
            caps.extend(f"AUTH={name}" for name in mechanisms)
            caps.append("SASL-IR")
        caps += [
            "LITERAL+",
            "ID",
            "ENABLE",
            "IDLE",
            "NAMESPACE",
            "UNSELECT",
            "CHILDREN",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "SPECIAL-USE",
            "CREATE-SPECIAL-USE",
            "UIDPLUS",
            "MOVE",
            "ESEARCH",
            "SEARCHRES",
            "CONDSTORE",
            "QRESYNC",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "QUOTA=RES-MESSAGE",
            f"APPENDLIMIT={self.policy.append_max}",
            "STATUS=SIZE",
            "SORT",
            "SORT=DISPLAY",
            "ESORT",
            "THREAD=ORDEREDSUBJECT",
            "THREAD=REFERENCES",
            "UTF8=ACCEPT",
            "MULTIAPPEND",
            "BINARY",
            "WITHIN",
        ]
        if not self.io.compressed:
            caps.append("COMPRESS=DEFLATE")
        return " ".join(caps).encode()

    # -- any state -----------------------------------------------------------------------------

    async def cmd_capability(self, cmd: c.Capability) -> None:
        self.io.send(b"* CAPABILITY " + self._capabilities() + b"\r\n")
        self._ok(cmd.tag, "Capability completed")

    async def cmd_noop(self, cmd: c.Noop | c.Check) -> None:
        await self._catch_up()
        self._ok(cmd.tag, f"{_name(cmd)} completed")

    async def _catch_up(self) -> None:
        """Compare the selected mailbox with the store and queue what the bus did not tell.

        The event bus is per process: with `--workers N` another worker's commits reach
        this session only through this check, which NOOP, CHECK and IDLE make (the polls
        clients already send).  In one process it finds nothing the bus has not queued.
        """
        selected = self.selected
        if selected is None:
            return
        mailbox = await self.store.get_mailbox(self._account_id(), selected.mailbox.name)
        if mailbox is None or mailbox.id != selected.mailbox.id:
            return
        if mailbox.highestmodseq <= selected.highestmodseq:
            return
        since = selected.highestmodseq
        known = set(selected.uids)
        current = await self.store.uids(mailbox.id)
        changed = [e for e in await self.store.changed_since(mailbox.id, since) if e.uid in known]
        selected.subscription.push(
            Expunged(mailbox.id, tuple(known - set(current)), mailbox.highestmodseq)
        )
        selected.subscription.push(MessagesAdded(mailbox.id, tuple(current), mailbox.highestmodseq))
        selected.subscription.push(
            FlagsChanged(
                mailbox.id,
                tuple((e.uid, e.modseq, e.flags, e.keywords) for e in changed),
                mailbox.highestmodseq,
            )
        )

    async def cmd_logout(self, cmd: c.Logout) -> None:
        self.io.send(b"* BYE Logging out\r\n")
        self._tagged(cmd.tag, "OK", "Logout completed", None)
        raise _End(None)

    async def cmd_id(self, cmd: c.Id) -> None:
        # RFC 2971: the client's values are only logged.
        if cmd.params:
            self.conn.log.info("client id", extra={"client_id": dict(cmd.params)})
        self.io.send(b'* ID ("name" "postoffice" "version" %b)\r\n' % w.quoted(__version__))
        self._ok(cmd.tag, "ID completed")

    # -- not authenticated ---------------------------------------------------------------------

    async def cmd_starttls(self, cmd: c.StartTls) -> None:
        if not self._starttls_offered():
            raise Bad("STARTTLS is not available now", "CLIENTBUG")
        self._tagged(cmd.tag, "OK", "Begin TLS negotiation now", None)
        # RFC 9051 §6.2.1: anything pipelined after STARTTLS came in cleartext; it is dropped.
        await self.io.start_tls(self.tls, self.policy.tls_handshake_seconds)

    async def cmd_login(self, cmd: c.Login) -> None:
        # RFC 9051 §6.2.3 / DESIGN §7: no cleartext passwords outside the allowed networks.
        if not (self.conn.tls or self._plaintext_allowed()):
            raise No("Plaintext authentication disallowed without TLS", "PRIVACYREQUIRED")
        result = await self.authenticator.authenticate_password(
            cmd.username, cmd.password, self.conn.peer
        )
        self._authenticated(cmd.tag, result)

    async def cmd_authenticate(self, cmd: c.Authenticate) -> None:
        # The authenticator takes the initial response in its wire form.
        initial = None if cmd.initial is None else base64.b64encode(cmd.initial) or b"="
        result = await self.authenticator.run_sasl(
            cmd.mechanism,
            initial,
            ip=self.conn.peer,
            tls_active=self.conn.tls,
            plaintext_allowed=self._plaintext_allowed(),
            send_challenge=self._send_challenge,
            receive_response=self._receive_sasl_line,
        )
        match result:
            case AuthCancelled():
                raise Bad("Authentication cancelled")
            case AuthMalformed():
                raise Bad("Invalid base64 in SASL response")
            case AuthUnsupported():
                raise No("Unsupported authentication mechanism", "CANNOT")
            case AuthSuccess() | AuthFailure() | AuthThrottled():
                self._authenticated(cmd.tag, result)

    def _authenticated(self, tag: str, result: AuthSuccess | AuthFailure | AuthThrottled) -> None:
        match result:
            case AuthSuccess():
                self.user = result
                self.conn.log.info("authenticated", extra={"user": result.address})
                self._tagged(tag, "OK", "Logged in", "CAPABILITY " + self._capabilities().decode())
            case AuthThrottled():
                raise No("Too many failed logins; try again later", "UNAVAILABLE")
            case AuthFailure():
                raise No("Invalid credentials", "AUTHENTICATIONFAILED")

    async def _send_challenge(self, challenge: bytes) -> None:
        self.io.send(b"+ " + challenge + b"\r\n")
        await self.io.flush()

    async def _receive_sasl_line(self) -> bytes:
        line = await self.io.line(idle=False, limit=SASL_LINE_MAX)
        return line.rstrip(b"\r\n")

    # -- authenticated -------------------------------------------------------------------------

    def _account_id(self) -> int:
        assert self.user is not None  # the command table guarantees it
        return self.user.account_id

    def _name_in(self, raw: str) -> str:
        """A mailbox name from the wire as the store spells it."""
        if self.utf8:
            return raw
        try:
            return utf7.decode(raw)
        except ValueError:
            raise No("Mailbox name is not valid modified UTF-7", "CANNOT") from None

    def _pattern_in(self, raw: str) -> str:
        """A LIST reference or pattern: one that is not valid modified UTF-7 can still
        match, literally (RFC 9051 §6.3.9 asks for no error)."""
        try:
            return self._name_in(raw)
        except No:
            return raw

    def _name_out(self, name: str) -> bytes:
        return w.mailbox(name, self.utf8)

    async def _mailbox(self, raw: str, *, trycreate: bool = False) -> Mailbox:
        found = await self.store.get_mailbox(self._account_id(), self._name_in(raw))
        if found is None:
            raise No("Mailbox does not exist", "TRYCREATE" if trycreate else "NONEXISTENT")
        return found

    async def cmd_enable(self, cmd: c.Enable) -> None:
        enabled: list[str] = []
        for name in cmd.capabilities:
            if name not in _ENABLEABLE:
                continue
            enabled.append(name)
            if name == "CONDSTORE":
                self.options.condstore = True
            elif name == "QRESYNC":
                self.options.qresync = self.options.condstore = True
            elif name == "IMAP4REV2":
                self.options.rev2 = True
                self._assembler = self._new_assembler()
            elif name == "UTF8=ACCEPT":
                self.utf8 = True
                self._assembler = self._new_assembler()
        self.io.send(b"* ENABLED" + b"".join(b" " + n.encode() for n in enabled) + b"\r\n")
        self._ok(cmd.tag, "Enabled")

    async def cmd_select(self, cmd: c.Select) -> None:
        if self.selected is not None:
            self._deselect()
            if self.options.rev2 or self.options.qresync:
                # RFC 7162 §3.2.11 / RFC 9051 §7.1: the old mailbox is closed from here on.
                self.io.send(b"* OK [CLOSED] Previous mailbox closed\r\n")
        if cmd.qresync is not None and not self.options.qresync:
            raise Bad("QRESYNC must be enabled first", "CLIENTBUG")
        if cmd.condstore:
            self.options.condstore = True  # SELECT reports HIGHESTMODSEQ itself
        mailbox = await self._mailbox(cmd.mailbox)
        subscription = self.store.events.subscribe(self._account_id(), mailbox.id)
        try:
            # Shared with the store's cache and other sessions: the view replaces, never
            # mutates, it (selected.py).
            uids = await self.store.uids(mailbox.id)
            # Read after the UIDs, so UIDNEXT is above every one of them; no counting scan
            # (STATUS's) on the way: SELECT reports no counts beyond EXISTS.
            current = await self.store.get_mailbox(self._account_id(), mailbox.name)
            if current is None or current.id != mailbox.id:
                raise NotFound("mailbox no longer exists")
            recent_above = await self.store.claim_recent(mailbox.id, claim=not cmd.readonly)
        except BaseException:
            subscription.close()
            raise
        mailbox = current
        claims = None if cmd.readonly else self.recent_claims
        selected = SelectedMailbox(
            mailbox, cmd.readonly, uids, subscription, mailbox.highestmodseq, claims
        )
        self.selected = selected
        above = self.recent_claims.floor(mailbox.id, recent_above)
        unclaimed = uids[bisect.bisect_right(uids, above) :]
        selected.recent = set(unclaimed) if claims is None else claims.claim(mailbox.id, unclaimed)
        selected.absorb(subscription.pending())
        selected.announced_exists = len(selected.uids)
        self.io.send(b"* %d EXISTS\r\n" % len(selected.uids))
        if not self.options.rev2:
            self.io.send(b"* %d RECENT\r\n" % len(selected.recent))
        self.io.send(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n")
        permanent = b"" if cmd.readonly else b"\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*"
        self.io.send(b"* OK [PERMANENTFLAGS (%b)] Flags permitted\r\n" % permanent)
        if not self.options.rev2:
            first = await self.store.search(mailbox.id, s.HasFlag(Flag.SEEN, False))
            seq = selected.seq_of(first[0]) if first else 0
            if seq:
                self.io.send(b"* OK [UNSEEN %d] First unseen\r\n" % seq)
        self.io.send(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % mailbox.uidvalidity)
        self.io.send(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % mailbox.uidnext)
        self.io.send(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % mailbox.highestmodseq)
        if self.options.rev2:
            self.io.send(b'* LIST () "/" %b\r\n' % self._name_out(mailbox.name))
        if cmd.qresync is not None:
            await self._qresync(selected, cmd.qresync)
        code = "READ-ONLY" if cmd.readonly else "READ-WRITE"
        self._ok(cmd.tag, "Select completed", code)

    async def _qresync(self, selected: SelectedMailbox, params: c.Qresync) -> None:
        """RFC 7162 §3.2.5: what changed since the client's last known state."""
        mailbox = selected.mailbox
        if params.uidvalidity != mailbox.uidvalidity:
            return
        known = (
            None if params.known_uids is None else set(selected.resolve(params.known_uids, True))
        )
        vanished = await self.store.vanished_since(mailbox.id, params.modseq)
        if params.known_uids is not None:
            wanted = _set_members(params.known_uids, (selected.uids[-1] if selected.uids else 0))
            vanished = [uid for uid in vanished if uid in wanted]
        if vanished:
            self.io.send(b"* VANISHED (EARLIER) " + w.sequence_set(vanished) + b"\r\n")
        for entry in await self.store.changed_since(mailbox.id, params.modseq):
            seq = selected.seq_of(entry.uid)
            if not seq or (known is not None and entry.uid not in known):
                continue
            self.io.send(
                selected.flags_response(
                    seq, entry.uid, entry.modseq, entry.flags, entry.keywords, self.options, True
                )
            )

    def _enable_condstore(self) -> None:
        """RFC 7162 §3.1: a CONDSTORE-enabling command turns it on for the session; with a
        mailbox selected, the client learns its HIGHESTMODSEQ right then."""
        if self.options.condstore:
            return
        self.options.condstore = True
        if self.selected is not None:
            modseq = self.selected.highestmodseq
            self.io.send(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % modseq)

    def _deselect(self) -> None:
        if self.selected is not None:
            self.selected.close()
            self.selected = None

    async def cmd_create(self, cmd: c.Create) -> None:
        name = self._name_in(cmd.mailbox).rstrip("/")
        uses = [_SPECIAL_USE.get(use.upper()) for use in cmd.special_use]
        if None in uses or len(uses) > 1:
            raise No("Unsupported special-use attribute", "USEATTR")
        special = uses[0] if uses else None
        if is_inbox(name):
            raise No("INBOX always exists", "ALREADYEXISTS")
        account = self._account_id()
        if special is not None and any(
            m.special_use is special for m in await self.store.list_mailboxes(account)
        ):
            # RFC 6154 §3: the attribute, not the name, is what is refused.
            raise No(f"Another mailbox already has {special.value}", "USEATTR")
        await self.store.create_mailbox(account, name, special)
        self._ok(cmd.tag, "Create completed")

    async def cmd_delete(self, cmd: c.Delete) -> None:
        name = self._name_in(cmd.mailbox)
        if is_inbox(name):
            raise No("INBOX cannot be deleted", "CANNOT")
        selected = self.selected
        if selected is not None and selected.mailbox.name == name:
            self._deselect()
        await self.store.delete_mailbox(self._account_id(), name)
        self._ok(cmd.tag, "Delete completed")

    async def cmd_rename(self, cmd: c.Rename) -> None:
        old, new = self._name_in(cmd.old), self._name_in(cmd.new).rstrip("/")
        if is_inbox(new):
            raise No("INBOX already exists", "ALREADYEXISTS")
        await self.store.rename_mailbox(self._account_id(), old, new)
        self._ok(cmd.tag, "Rename completed")

    async def cmd_subscribe(self, cmd: c.Subscribe) -> None:
        name = self._name_in(cmd.mailbox)
        await self.store.set_subscribed(self._account_id(), name, cmd.subscribe)
        self._ok(cmd.tag, f"{'Subscribe' if cmd.subscribe else 'Unsubscribe'} completed")

    async def cmd_namespace(self, cmd: c.Namespace) -> None:
        self.io.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        self._ok(cmd.tag, "Namespace completed")

    async def cmd_list(self, cmd: c.ListMailboxes) -> None:
        reference = self._pattern_in(cmd.reference)
        patterns = [self._pattern_in(p) for p in cmd.patterns]
        kind = b"LSUB" if cmd.lsub else b"LIST"
        if not cmd.lsub and patterns == [""]:
            # RFC 9051 §6.3.9: the hierarchy delimiter and the root of the reference.
            root = reference.split("/", 1)[0] + "/" if "/" in reference else ""
            self.io.send(b'* LIST (\\Noselect) "/" %b\r\n' % w.quoted(root))
            self._ok(cmd.tag, "List completed")
            return
        account = self._account_id()
        boxes = {m.name: m for m in await self.store.list_mailboxes(account)}
        subscribed = set(await self.store.list_subscriptions(account))
        select = cmd.select_options
        returns = cmd.return_options | (
            {"SUBSCRIBED"} if "SUBSCRIBED" in select or cmd.lsub else set()
        )
        listed = _listed_names(boxes, subscribed, reference, patterns, cmd)
        parents = {parent for name in boxes for parent in _ancestors(name)}
        for name, childinfo in listed:
            attrs = _list_attributes(name, boxes, parents, subscribed, cmd, returns)
            # RFC 5258 §3.5: a parent listed only for its subscribed children says so.
            extra = b' ("CHILDINFO" ("SUBSCRIBED"))' if childinfo else b""
            self.io.send(
                b'* %b (%b) "/" %b%b\r\n'
                % (kind, " ".join(attrs).encode(), self._name_out(name), extra)
            )
            mailbox = boxes.get(name)
            if cmd.return_status is not None and mailbox is not None:
                self.io.send(await self._status_line(mailbox, cmd.return_status))
        self._ok(cmd.tag, f"{kind.decode().capitalize()} completed")

    async def cmd_status(self, cmd: c.Status) -> None:
        mailbox = await self._mailbox(cmd.mailbox)
        unknown = [item for item in cmd.items if item not in _STATUS_ITEMS]
        if unknown:
            raise Bad(f"Unknown STATUS item {unknown[0]}", "CLIENTBUG")
        self.io.send(await self._status_line(mailbox, cmd.items))
        self._ok(cmd.tag, "Status completed")

    async def _status_line(self, mailbox: Mailbox, items: Sequence[str]) -> bytes:
        status = await self.store.status(mailbox.id)
        mailbox = status.mailbox
        recent = 0
        if "RECENT" in items:
            stored = await self.store.claim_recent(mailbox.id, claim=False)
            above = self.recent_claims.floor(mailbox.id, stored)
            uids = await self.store.uids(mailbox.id)
            recent = len(uids) - bisect.bisect_right(uids, above)
        values = {
            "MESSAGES": status.messages,
            "UIDNEXT": mailbox.uidnext,
            "UIDVALIDITY": mailbox.uidvalidity,
            "UNSEEN": status.unseen,
            "DELETED": status.deleted,
            "SIZE": status.size,
            "RECENT": recent,
            "HIGHESTMODSEQ": mailbox.highestmodseq,
            "APPENDLIMIT": self.policy.append_max,
        }
        if "HIGHESTMODSEQ" in items:
            self._enable_condstore()
        body = " ".join(f"{item} {values[item]}" for item in items if item in values)
        return b"* STATUS %b (%b)\r\n" % (self._name_out(mailbox.name), body.encode())

    async def cmd_append(self, cmd: c.Append) -> None:
        mailbox = await self._mailbox(cmd.mailbox, trycreate=True)
        appended: list[int] = []
        uidvalidity = mailbox.uidvalidity
        try:
            for message in cmd.messages:
                if not message.data:
                    raise No("Empty message", "CLIENTBUG")
                flags, keywords = _flags_of(message.flags)
                result = await self.store.append(
                    message.data,
                    [AppendTarget(mailbox.id, flags, keywords)],
                    message.date,
                )
                uidvalidity = result[0].uidvalidity
                appended.append(result[0].uid)
        except BaseException:
            if appended:
                # RFC 3502 §3: MULTIAPPEND is all or nothing.
                await self._undo_append(mailbox.id, appended)
            raise
        self._ok(
            cmd.tag,
            "Append completed",
            f"APPENDUID {uidvalidity} {w.ordered_set(appended).decode()}",
        )

    async def _undo_append(self, mailbox_id: int, uids: list[int]) -> None:
        uid_set = UidSet.of(uids)
        await self.store.store_flags(mailbox_id, uid_set, StoreMode.ADD, Flag.DELETED)
        await self.store.expunge(mailbox_id, uid_set)

    async def cmd_idle(self, cmd: c.Idle) -> None:
        await self._catch_up()
        self.io.send(b"+ idling\r\n")
        self._updates(allow_expunge=True)
        selected = self.selected
        if selected is not None:
            selected.subscription.notify = self._on_event
        try:
            line = await self.io.line(idle=True, limit=self.policy.line_max)
        finally:
            if selected is not None:
                selected.subscription.notify = None
        if line.rstrip(b"\r\n").upper() != b"DONE":
            raise Bad("Expected DONE to end IDLE", "CLIENTBUG")
        self._ok(cmd.tag, "Idle completed")

    def _on_event(self) -> None:
        """A commit touched the mailbox this idling session has selected: tell it now."""
        self._updates(allow_expunge=True)
        self.io.write_now()

    async def cmd_getquotaroot(self, cmd: c.GetQuotaRoot) -> None:
        mailbox = await self._mailbox(cmd.mailbox)
        quota = await self._quota_line()
        root = b' ""' if quota else b""
        self.io.send(b"* QUOTAROOT %b%b\r\n" % (self._name_out(mailbox.name), root))
        if quota:
            self.io.send(quota)
        self._ok(cmd.tag, "Getquotaroot completed")

    async def cmd_getquota(self, cmd: c.GetQuota) -> None:
        quota = await self._quota_line()
        if cmd.root != "" or not quota:
            raise No("No such quota root", "NONEXISTENT")
        self.io.send(quota)
        self._ok(cmd.tag, "Getquota completed")

    async def _quota_line(self) -> bytes | None:
        """RFC 9208 §5.1: the account's one quota root "", if it has limits."""
        assert self.user is not None
        account = await self.store.get_account(self.user.address)
        if account is None:
            return None
        resources = []
        if account.quota_bytes is not None:
            resources.append(f"STORAGE {account.used_bytes // 1024} {account.quota_bytes // 1024}")
        if account.quota_messages is not None:
            resources.append(f"MESSAGE {account.used_messages} {account.quota_messages}")
        if not resources:
            return None
        return b'* QUOTA "" (%b)\r\n' % " ".join(resources).encode()

    async def cmd_setquota(self, cmd: c.SetQuota) -> None:
        raise No("Quotas are set by the administrator", "NOPERM")

    async def cmd_compress(self, cmd: c.Compress) -> None:
        if self.io.compressed:
            raise No("Compression is already active", "COMPRESSIONACTIVE")
        if cmd.mechanism != "DEFLATE":
            raise Bad("Unknown compression mechanism", "CLIENTBUG")
        self._tagged(cmd.tag, "OK", "DEFLATE active", None)
        await self.io.start_deflate()

    # -- selected ------------------------------------------------------------------------------

    def _sel(self) -> SelectedMailbox:
        assert self.selected is not None  # the command table guarantees it
        return self.selected

    def _writable(self) -> SelectedMailbox:
        selected = self._sel()
        if selected.readonly:
            raise No("Mailbox is read-only", "READ-ONLY")
        return selected

    async def cmd_close(self, cmd: c.Close) -> None:
        selected = self._sel()
        if not selected.readonly:
            await self.store.expunge(selected.mailbox.id)
        self._deselect()
        self._tagged(cmd.tag, "OK", "Close completed", None)

    async def cmd_unselect(self, cmd: c.Unselect) -> None:
        self._deselect()
        self._tagged(cmd.tag, "OK", "Unselect completed", None)

    async def cmd_expunge(self, cmd: c.Expunge) -> None:
        selected = self._writable()
        uids = None if cmd.uids is None else UidSet.of(selected.resolve(cmd.uids, True))
        if uids is None or uids.ranges:
            await self.store.expunge(selected.mailbox.id, uids)
        self._ok(cmd.tag, "Expunge completed")

    async def cmd_fetch(self, cmd: c.Fetch) -> None:
        selected = self._sel()
        if cmd.vanished and not (cmd.uid and self.options.qresync and cmd.changed_since):
            raise Bad("VANISHED needs UID FETCH with CHANGEDSINCE and QRESYNC", "CLIENTBUG")
        asks_modseq = any(isinstance(i, c.FetchAttr) and i.name == "MODSEQ" for i in cmd.items)
        if cmd.changed_since is not None or asks_modseq:
            self._enable_condstore()
        uids = selected.resolve(cmd.set, cmd.uid)
        self._updates(allow_expunge=cmd.uid)
        plan = f.plan(cmd.items, cmd.uid, self.options.condstore)
        mailbox_id = selected.mailbox.id
        if cmd.vanished and cmd.changed_since is not None:
            gone = await self.store.vanished_since(mailbox_id, cmd.changed_since)
            wanted = _set_members(cmd.set, selected.uids[-1] if selected.uids else 0)
            gone = [uid for uid in gone if uid in wanted]
            if gone:
                self.io.send(b"* VANISHED (EARLIER) " + w.sequence_set(gone) + b"\r\n")
        if not uids:
            self._ok(cmd.tag, "Fetch completed", allow_expunge=cmd.uid)
            return
        # A chunk at a time: memory stays bounded and the event loop gets a turn between
        # store calls, however many messages the client asked for.
        for start in range(0, len(uids), FETCH_CHUNK):
            await self._fetch_chunk(selected, cmd, plan, uids[start : start + FETCH_CHUNK])
        self._ok(cmd.tag, "Fetch completed", allow_expunge=cmd.uid)

    async def _fetch_chunk(
        self, selected: SelectedMailbox, cmd: c.Fetch, plan: f.Plan, uids: list[int]
    ) -> None:
        mailbox_id = selected.mailbox.id
        entries = await self.store.fetch(mailbox_id, UidSet.of(uids), plan.what)
        if cmd.changed_since is not None:
            entries = [e for e in entries if e.modseq > cmd.changed_since]
        before = {e.uid: e.flags for e in entries}
        if plan.sets_seen and not selected.readonly:
            entries = await self._mark_seen(selected, entries)
        raws: dict[int, bytes] = {}
        for index, entry in enumerate(entries):
            seq = selected.seq_of(entry.uid)
            if not seq:
                continue
            if plan.needs_raw and entry.uid not in raws:
                raws = await self.store.read_messages(
                    mailbox_id, UidSet.of(_batch(entries, index)), plan.header_only
                )
            raw = raws.get(entry.uid)
            recent = not self.options.rev2 and entry.uid in selected.recent
            try:
                self.io.send(
                    f.render(
                        seq,
                        entry,
                        raw,
                        plan,
                        w.flags(entry.flags, entry.keywords, recent),
                        flags_changed=before[entry.uid] != entry.flags,
                    )
                )
            except f.UnknownCte:
                raise No("Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
            if self.io.queued >= FLUSH_AT:
                await self.io.flush()

    async def _mark_seen(self, selected: SelectedMailbox, entries: list[Entry]) -> list[Entry]:
        """Set \\Seen on the messages a non-peek fetch reads (RFC 9051 §6.4.5); the entries
        that changed come back with their new flags."""
        unseen = [e.uid for e in entries if not e.flags & Flag.SEEN]
        if not unseen:
            return entries
        result = await self.store.store_flags(
            selected.mailbox.id, UidSet.of(unseen), StoreMode.ADD, Flag.SEEN
        )
        changed = {u.uid: u for u in result.updated}
        selected.own_changes.update((u.uid, u.modseq) for u in result.updated)
        return [
            replace(e, flags=changed[e.uid].flags, modseq=changed[e.uid].modseq)
            if e.uid in changed
            else e
            for e in entries
        ]

    async def cmd_store(self, cmd: c.StoreFlags) -> None:
        selected = self._writable()
        flags, keywords = _flags_of(cmd.flags)
        if cmd.unchanged_since is not None:
            self._enable_condstore()
        uids = selected.resolve(cmd.set, cmd.uid)
        self._updates(allow_expunge=cmd.uid)
        result = await self.store.store_flags(
            selected.mailbox.id,
            UidSet.of(uids),
            cmd.mode,
            flags,
            keywords,
            cmd.unchanged_since,
        )
        selected.own_changes.update((u.uid, u.modseq) for u in result.updated)
        if not cmd.silent or self.options.condstore:
            for update in result.updated:
                seq = selected.seq_of(update.uid)
                if seq and not (cmd.silent and cmd.unchanged_since is None):
                    self.io.send(
                        selected.flags_response(
                            seq,
                            update.uid,
                            update.modseq,
                            update.flags,
                            update.keywords,
                            self.options,
                            cmd.uid,
                        )
                    )
        code = None
        if result.failed_unchanged_since:
            failed = result.failed_unchanged_since
            numbers = failed if cmd.uid else [selected.seq_of(u) for u in failed]
            code = "MODIFIED " + w.sequence_set(numbers).decode()
        self._ok(cmd.tag, "Store completed", code, allow_expunge=cmd.uid)

    async def cmd_copy(self, cmd: c.Copy) -> None:
        selected = self._writable() if cmd.move else self._sel()
        target = await self._mailbox(cmd.mailbox, trycreate=True)
        uids = selected.resolve(cmd.set, cmd.uid)
        if not uids:
            self._ok(cmd.tag, f"{'Move' if cmd.move else 'Copy'} completed")
            return
        operation = self.store.move if cmd.move else self.store.copy
        result = await operation(selected.mailbox.id, UidSet.of(uids), target.id)
        code = None
        if result.pairs:
            sources = w.ordered_set(p[0] for p in result.pairs).decode()
            targets = w.ordered_set(p[1] for p in result.pairs).decode()
            code = f"COPYUID {result.uidvalidity} {sources} {targets}"
        if cmd.move:
            # RFC 6851 §4.3: COPYUID in an untagged OK before the expunges.
            if code:
                self.io.send(f"* OK [{code}] Moved\r\n".encode())
            self._ok(cmd.tag, "Move completed")
        else:
            self._ok(cmd.tag, "Copy completed", code)
        spam = training_for_transfer(selected.mailbox, target, cmd.move)
        if spam is not None and result.pairs:
            uids_copied = [p[1] for p in result.pairs]
            self.junk_training.start(self.conn.log, target.account_id, target.id, uids_copied, spam)

    async def cmd_search(self, cmd: c.Search) -> None:
        selected = self._sel()
        uids, modseqs = await self._search(selected, cmd.key, cmd.uid)
        if cmd.returns is not None or self.options.rev2:
            self._esearch(cmd.tag, selected, uids, cmd.uid, cmd.returns or (), modseqs)
        else:
            numbers = uids if cmd.uid else [selected.seq_of(u) for u in uids]
            line = b"* SEARCH" + b"".join(b" %d" % n for n in numbers)
            if modseqs:
                line += b" (MODSEQ %d)" % max(modseqs.values())
            self.io.send(line + b"\r\n")
        self._ok(cmd.tag, "Search completed", allow_expunge=cmd.uid)

    async def _search(
        self, selected: SelectedMailbox, key: c.SearchKey, uid: bool
    ) -> tuple[list[int], dict[int, int] | None]:
        """Matching UIDs in view, ascending, and their MODSEQs when the search used MODSEQ
        (RFC 7162 §3.1.5 reports the highest of those returned)."""
        self._updates(allow_expunge=uid)
        store_key = self._store_key(selected, key)
        found = await self.store.search(selected.mailbox.id, store_key)
        uids = [u for u in found if selected.seq_of(u)]
        if not _uses_modseq(key):
            return uids, None
        self._enable_condstore()
        entries = await self.store.fetch(selected.mailbox.id, UidSet.of(uids)) if uids else []
        return uids, {e.uid: e.modseq for e in entries}

    def _store_key(self, selected: SelectedMailbox, key: c.SearchKey) -> s.SearchKey:
        match key:
            case c.InSet(set=seqset, uid=uid):
                # A number past the end matches nothing here (as in Dovecot), not a BAD.
                return s.Uids(UidSet.of(selected.resolve(seqset, uid, strict=False)))
            case c.Recent(present=present):
                recent = s.Uids(UidSet.of(sorted(selected.recent)))
                return recent if present else s.Not(recent)
            case c.SNot(key=inner):
                return s.Not(self._store_key(selected, inner))
            case c.SAnd(keys=keys):
                return s.And(tuple(self._store_key(selected, k) for k in keys))
            case c.SOr(left=left, right=right):
                return s.Or(self._store_key(selected, left), self._store_key(selected, right))
            case _:
                return key

    def _esearch(
        self,
        tag: str,
        selected: SelectedMailbox,
        uids: list[int],
        uid: bool,
        returns: Sequence[str],
        modseqs: dict[int, int] | None,
        ordered: bool = False,
    ) -> None:
        """RFC 4731 ESEARCH (and RFC 5267 ESORT when `ordered`), RFC 5182 SAVE."""
        numbers = uids if uid else [selected.seq_of(u) for u in uids]
        options = set(returns) or {"ALL"}
        # RFC 5182 §2.4 / RFC 7162 §3.1.5: SAVE and MODSEQ cover only what is returned.
        returned = uids
        if uids and not options & {"ALL", "COUNT"}:
            returned = (
                sorted(
                    ({min(uids)} if "MIN" in options else set())
                    | ({max(uids)} if "MAX" in options else set())
                )
                or uids
            )
        if "SAVE" in options:
            selected.saved = returned
            options.discard("SAVE")
            if not options:
                return
        unknown = options - {"MIN", "MAX", "ALL", "COUNT"}
        if unknown:
            raise Bad(f"Unsupported RETURN option {sorted(unknown)[0]}", "CLIENTBUG")
        items = [b"(TAG %b)" % w.quoted(tag)]
        if uid:
            items.append(b"UID")
        if numbers:
            if "MIN" in options:
                items.append(b"MIN %d" % min(numbers))
            if "MAX" in options:
                items.append(b"MAX %d" % max(numbers))
            if "ALL" in options:
                rendered = w.ordered_set(numbers) if ordered else w.sequence_set(numbers)
                items.append(b"ALL " + rendered)
        if "COUNT" in options:
            items.append(b"COUNT %d" % len(numbers))
        highest = (
            max((modseqs[u] for u in returned if u in modseqs), default=None) if modseqs else None
        )
        if highest is not None:
            items.append(b"MODSEQ %d" % highest)
        self.io.send(b"* ESEARCH " + b" ".join(items) + b"\r\n")

    async def cmd_sort(self, cmd: c.Sort) -> None:
        selected = self._sel()
        uids, modseqs = await self._search(selected, cmd.key, cmd.uid)
        fields = await self.store.sort_fields(selected.mailbox.id, UidSet.of(uids)) if uids else []
        ordered = sorting.sort_uids(fields, cmd.criteria)
        if cmd.returns is not None:
            self._esearch(cmd.tag, selected, ordered, cmd.uid, cmd.returns or (), modseqs, True)
        else:
            numbers = ordered if cmd.uid else [selected.seq_of(u) for u in ordered]
            self.io.send(b"* SORT" + b"".join(b" %d" % n for n in numbers) + b"\r\n")
        self._ok(cmd.tag, "Sort completed", allow_expunge=cmd.uid)

    async def cmd_thread(self, cmd: c.Thread) -> None:
        selected = self._sel()
        uids, _ = await self._search(selected, cmd.key, cmd.uid)
        fields = await self.store.sort_fields(selected.mailbox.id, UidSet.of(uids)) if uids else []
        if cmd.algorithm == "ORDEREDSUBJECT":
            threads = threading_.thread_orderedsubject(fields)
        else:
            threads = threading_.thread_references(fields)
        number = (lambda u: u) if cmd.uid else selected.seq_of
        self.io.send(b"* THREAD " + threading_.render_threads(threads, number) + b"\r\n")
        self._ok(cmd.tag, "Thread completed", allow_expunge=cmd.uid)


# -- helpers -----------------------------------------------------------------------------------


def _batch(entries: Sequence[Entry], start: int) -> list[int]:
    """The UIDs of the entries from `start` whose messages to read in one store call: a few
    hundred small ones, or one large one, so memory stays bounded."""
    uids: list[int] = []
    total = 0
    for entry in entries[start : start + READ_BATCH]:
        if uids and total + entry.size > READ_BATCH_BYTES:
            break
        uids.append(entry.uid)
        total += entry.size
    return uids


def _name(command: c.Command) -> str:
    return type(command).__name__.upper()


def _flags_of(names: Sequence[str]) -> tuple[Flag, frozenset[str]]:
    """Client flag names as the store keeps them; unknown system flags are a BAD."""
    flags = Flag(0)
    keywords: set[str] = set()
    for name in names:
        if name.startswith("\\"):
            flag = _FLAG_BY_NAME.get(name.upper())
            if flag is not None:
                flags |= flag
            elif name.upper() != "\\RECENT":
                raise Bad(f"Invalid system flag {name}", "CLIENTBUG")
        else:
            keywords.add(name)
    return flags, frozenset(keywords)


def _set_members(seqset: c.SeqSet, top: int) -> set[int]:
    members: set[int] = set()
    for lo, hi in seqset.ranges:
        lo, hi = lo or top, hi or top
        members.update(range(min(lo, hi), max(lo, hi) + 1))
    return members


def _uses_modseq(key: c.SearchKey) -> bool:
    match key:
        case s.ModSeq():
            return True
        case c.SNot(key=inner):
            return _uses_modseq(inner)
        case c.SAnd(keys=keys):
            return any(_uses_modseq(k) for k in keys)
        case c.SOr(left=left, right=right):
            return _uses_modseq(left) or _uses_modseq(right)
        case _:
            return False


def _listed_names(
    boxes: dict[str, Mailbox],
    subscribed: set[str],
    reference: str,
    patterns: Sequence[str],
    cmd: c.ListMailboxes,
) -> list[tuple[str, bool]]:
    """What a LIST/LSUB answers with, INBOX first, each once: (name, CHILDINFO)."""
    select = cmd.select_options
    regexes = [compile_list_pattern(reference, pattern) for pattern in patterns]

    def matches(name: str) -> bool:
        return any(r.fullmatch(name) for r in regexes)

    by_subscription = cmd.lsub or "SUBSCRIBED" in select
    universe = set(subscribed) if by_subscription else set(boxes)
    if "SPECIAL-USE" in select:
        universe = {n for n in universe if n in boxes and boxes[n].special_use is not None}
    matched = {n for n in universe if matches(n)}
    listed = dict.fromkeys(matched, False)
    for name in universe:
        for parent in _ancestors(name):
            if parent in universe or parent in listed or not matches(parent):
                continue
            if "RECURSIVEMATCH" in select:
                # Only for a descendant the client will not see listed on its own.
                if name not in matched:
                    listed[parent] = True
            elif (cmd.lsub and name not in matched) or (not cmd.lsub and not select):
                # RFC 3501 §6.3.9: "%" stopped at a level with matching names below.
                listed[parent] = False
    return sorted(listed.items(), key=lambda item: (not is_inbox(item[0]), item[0]))


def _ancestors(name: str) -> Iterator[str]:
    """The levels above a mailbox name: "a/b/c" gives "a", then "a/b"."""
    parts = name.split("/")
    for depth in range(1, len(parts)):
        yield "/".join(parts[:depth])


def _list_attributes(
    name: str,
    boxes: dict[str, Mailbox],
    parents: set[str],
    subscribed: set[str],
    cmd: c.ListMailboxes,
    returns: frozenset[str] | set[str],
) -> list[str]:
    if cmd.lsub:
        return [] if name in subscribed else ["\\Noselect"]
    mailbox = boxes.get(name)
    attrs: list[str] = []
    if mailbox is None:
        attrs.append("\\NonExistent" if cmd.extended else "\\Noselect")
    attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
    if "SUBSCRIBED" in returns and name in subscribed:
        attrs.append("\\Subscribed")
    if mailbox is not None and mailbox.special_use is not None:
        attrs.append(mailbox.special_use.value)
    return attrs
