"""The listener-layer entry point for `smtp`, `submission`, `submissions` and `lmtp`.

One `SmtpHandler` per listener turns the listener's name and the config into a `Policy`
once; each connection then gets its own `SmtpSession`.
"""

from __future__ import annotations

from postoffice.config import ListenerConfig, UnixAddress
from postoffice.context import Context
from postoffice.delivery.pipeline import Delivery
from postoffice.listeners import Connection
from postoffice.smtp.session import DeliveryPort, Policy, SmtpSession

SMTP_LISTENERS = ("smtp", "submission", "submissions", "lmtp")
_SUBMISSION = frozenset({"submission", "submissions"})


def build_policy(ctx: Context, listener: ListenerConfig) -> Policy:
    config = ctx.config
    return Policy(
        listener=listener.name,
        hostname=config.server.hostname,
        lmtp=listener.name == "lmtp",
        auth=listener.name in _SUBMISSION,
        # Implicit TLS has it already; a unix socket is local and has no use for it.
        starttls=not listener.implicit_tls and not isinstance(listener.address, UnixAddress),
        max_size=config.limits.message_size,
        max_recipients=config.smtp.max_recipients,
        max_errors=config.smtp.max_errors,
        idle_seconds=config.limits.smtp_idle_seconds,
        tls_handshake_seconds=config.limits.tls_handshake_seconds,
        line_max=config.smtp.max_command_line,
        long_lines_ok=config.smtp.long_lines == "accept",
        plaintext_networks=config.auth.plaintext_networks,
    )


class SmtpHandler:
    """A `listeners.SessionHandler` speaking SMTP, submission or LMTP."""

    def __init__(self, ctx: Context, listener: ListenerConfig, delivery: DeliveryPort) -> None:
        self.ctx = ctx
        self.policy = build_policy(ctx, listener)
        self.delivery = delivery
        self.authenticator = ctx.authenticator if self.policy.auth else None

    async def handle(self, conn: Connection) -> None:
        session = SmtpSession(
            conn, self.policy, self.delivery, self.authenticator, self.ctx.tls, self.ctx.clock
        )
        await session.run()

    def refusal(self, reason: str) -> bytes:
        # RFC 5321 §3.8: 421 when the service is not available to this client now.
        return f"421 4.7.0 {self.policy.hostname} {reason}\r\n".encode()


def smtp_handler(ctx: Context, listener: ListenerConfig) -> SmtpHandler:
    """The `HandlerFactory` registered for every SMTP-family listener."""
    return SmtpHandler(ctx, listener, Delivery(ctx))
