"""The listener-layer entry point for `imap` and `imaps`.

One `ImapHandler` per listener builds the `ImapPolicy` once; each connection gets its own
`ImapSession`.  The handler also keeps the live sessions, so that one task (not one per
session) ends every idle wait when the server begins to stop.
"""

from __future__ import annotations

import functools

from postoffice.channel import LiveSessions
from postoffice.config import ListenerConfig, UnixAddress
from postoffice.context import Context
from postoffice.filters.junk.training import BackgroundTraining
from postoffice.imap.selected import RecentClaims
from postoffice.imap.session import ImapPolicy, ImapSession
from postoffice.listeners import Connection, HandlerFactory

IMAP_LISTENERS = ("imap", "imaps")


def build_policy(ctx: Context, listener: ListenerConfig) -> ImapPolicy:
    config = ctx.config
    limits = config.limits
    return ImapPolicy(
        listener=listener.name,
        hostname=config.server.hostname,
        starttls=not listener.implicit_tls and not isinstance(listener.address, UnixAddress),
        line_max=limits.command_line_length,
        literal_max=limits.literal_size,
        append_max=limits.message_size,
        idle_seconds=limits.imap_idle_seconds,
        tls_handshake_seconds=limits.tls_handshake_seconds,
        plaintext_networks=config.auth.plaintext_networks,
        bad_commands=limits.bad_commands,
    )


class ImapHandler:
    """A `listeners.SessionHandler` speaking IMAP."""

    def __init__(self, ctx: Context, listener: ListenerConfig, recent_claims: RecentClaims) -> None:
        self.ctx = ctx
        self.recent_claims = recent_claims
        self.junk_training = BackgroundTraining(ctx.store)
        self.policy = build_policy(ctx, listener)
        self.sessions = LiveSessions()

    async def handle(self, conn: Connection) -> None:
        session = ImapSession(
            conn,
            self.policy,
            self.ctx.store,
            self.ctx.authenticator,
            self.ctx.tls,
            self.recent_claims,
            self.junk_training,
        )
        self.sessions.add(session, conn.stopping)
        await session.run()

    def refusal(self, reason: str) -> bytes:
        # RFC 9051 §7.1.5: BYE, then the server closes.
        return f"* BYE {reason}\r\n".encode()


def imap_handlers() -> HandlerFactory:
    """The `HandlerFactory` to register for both `imap` and `imaps`: their sessions share
    one process's \\Recent claims."""
    return functools.partial(ImapHandler, recent_claims=RecentClaims())
