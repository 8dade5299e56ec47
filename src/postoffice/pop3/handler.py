"""The listener-layer entry point for `pop3` and `pop3s`.

One `Pop3Handler` per listener builds the `Pop3Policy` once; each connection gets its own
`Pop3Session`.  The handler keeps the live sessions so that one task ends every wait for
input when the server begins to stop (a POP3 client holds its maildrop lock meanwhile).
"""

from __future__ import annotations

from typing import Final

from postoffice.channel import LiveSessions
from postoffice.config import ListenerConfig, UnixAddress
from postoffice.context import Context
from postoffice.listeners import Connection
from postoffice.pop3 import responses as r
from postoffice.pop3.session import SYS_TEMP, Pop3Policy, Pop3Session

POP3_LISTENERS: Final = ("pop3", "pop3s")


def build_policy(ctx: Context, listener: ListenerConfig) -> Pop3Policy:
    config = ctx.config
    return Pop3Policy(
        listener=listener.name,
        hostname=config.server.hostname,
        starttls=not listener.implicit_tls and not isinstance(listener.address, UnixAddress),
        idle_seconds=config.limits.pop3_idle_seconds,
        tls_handshake_seconds=config.limits.tls_handshake_seconds,
        plaintext_networks=config.auth.plaintext_networks,
        bad_commands=config.limits.bad_commands,
        data_dir=ctx.data_dir,
    )


class Pop3Handler:
    """A `listeners.SessionHandler` speaking POP3."""

    def __init__(self, ctx: Context, listener: ListenerConfig) -> None:
        self.ctx = ctx
        self.policy = build_policy(ctx, listener)
        self.sessions = LiveSessions()

    async def handle(self, conn: Connection) -> None:
        ctx = self.ctx
        session = Pop3Session(conn, self.policy, ctx.store, ctx.authenticator, ctx.tls, ctx.clock)
        self.sessions.add(session, conn.stopping)
        await session.run()

    def refusal(self, reason: str) -> bytes:
        return r.err(reason, SYS_TEMP)
