"""The listener-layer entry point for `sieve`.

One `SieveHandler` per listener builds the `SievePolicy` once; each connection gets its own
`SieveSession`.  The handler keeps the live sessions so that one task ends every wait for
the next command when the server begins to stop.
"""

from __future__ import annotations

from typing import Final

from postoffice.channel import LiveSessions
from postoffice.config import ListenerConfig, UnixAddress
from postoffice.context import Context
from postoffice.listeners import Connection
from postoffice.managesieve import parser as p
from postoffice.managesieve.session import TRYLATER, SievePolicy, SieveSession

SIEVE_LISTENERS: Final = ("sieve",)


def build_policy(ctx: Context, listener: ListenerConfig) -> SievePolicy:
    config = ctx.config
    limits = config.limits
    return SievePolicy(
        listener=listener.name,
        hostname=config.server.hostname,
        starttls=not listener.implicit_tls and not isinstance(listener.address, UnixAddress),
        line_max=limits.command_line_length,
        idle_seconds=limits.sieve_idle_seconds,
        tls_handshake_seconds=limits.tls_handshake_seconds,
        plaintext_networks=config.auth.plaintext_networks,
        bad_commands=limits.bad_commands,
        max_script_size=config.sieve.max_script_size,
        max_scripts=config.sieve.max_scripts,
        max_redirects=config.sieve.max_redirects,
    )


class SieveHandler:
    """A `listeners.SessionHandler` speaking ManageSieve."""

    def __init__(self, ctx: Context, listener: ListenerConfig) -> None:
        self.ctx = ctx
        self.policy = build_policy(ctx, listener)
        self.sessions = LiveSessions()

    async def handle(self, conn: Connection) -> None:
        ctx = self.ctx
        session = SieveSession(conn, self.policy, ctx.store, ctx.authenticator, ctx.tls)
        self.sessions.add(session, conn.stopping)
        await session.run()

    def refusal(self, reason: str) -> bytes:
        return p.bye(reason, TRYLATER)
