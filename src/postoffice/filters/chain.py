"""The configured filter stages, run in order, each failure handled by its own policy.

`Delivery` owns one `FilterChain` (built by `build_filters`) and calls it at connect, MAIL,
RCPT, after DATA (message stages) and per local account (recipient stages).  The order is
fixed: cheap and refusing stages first, so a rejected message costs no content scan, and the
junk classifier before Sieve, so a user's script can test X-Spam-* headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from postoffice.delivery.model import Origin, Outcome, Verdict
from postoffice.filters.api import (
    Findings,
    LocalPlan,
    Message,
    MessageStage,
    OnFailure,
    RecipientStage,
    SessionStage,
    StageUnavailable,
)
from postoffice.log import BoundLogger

if TYPE_CHECKING:
    from postoffice.context import Context

T = TypeVar("T")

TRY_LATER = Verdict(Outcome.TEMPORARY_FAILURE, "a filter is unavailable, try again later")


class FilterChain:
    def __init__(
        self,
        log: BoundLogger,
        session: Sequence[SessionStage] = (),
        message: Sequence[MessageStage] = (),
        recipient: Sequence[RecipientStage] = (),
    ) -> None:
        self.log = log
        self.session_stages = tuple(session)
        self.message_stages = tuple(message)
        self.recipient_stages = tuple(recipient)

    @staticmethod
    def _screened(origin: Origin) -> bool:
        # Connection-level checks are for the world's MTAs: not for users who logged in,
        # nor for the trusted MTA that hands mail over by LMTP.
        return origin.listener == "smtp" and origin.account_id is None

    async def check_connect(self, origin: Origin) -> Verdict | None:
        return await self._first_refusal(origin, lambda stage: stage.check_connect(origin))

    async def check_sender(self, sender: str, origin: Origin) -> Verdict | None:
        return await self._first_refusal(origin, lambda stage: stage.check_sender(sender, origin))

    async def check_recipient(self, sender: str, recipient: str, origin: Origin) -> Verdict | None:
        return await self._first_refusal(
            origin, lambda stage: stage.check_recipient(sender, recipient, origin)
        )

    async def _first_refusal(
        self, origin: Origin, ask: Callable[[SessionStage], Awaitable[Verdict | None]]
    ) -> Verdict | None:
        """The first session stage's refusal, or None when every stage lets it through."""
        if not self._screened(origin):
            return None
        for stage in self.session_stages:
            try:
                verdict = await ask(stage)
            except Exception as exc:
                verdict = self._failed(stage.name, stage.on_failure, origin, exc)
            if verdict is not None:
                return verdict
        return None

    async def scan(self, message: Message) -> Findings:
        findings = Findings()
        for stage in self.message_stages:
            try:
                await stage.scan(message, findings)
            except Exception as exc:
                verdict = self._failed(stage.name, stage.on_failure, message.origin, exc)
                if verdict is not None:
                    findings.refuse(verdict)
            if findings.refusal is not None or findings.quarantined:
                break
        return findings

    async def plan(self, message: Message, plan: LocalPlan) -> None:
        for stage in self.recipient_stages:
            try:
                await stage.plan(message, plan)
            except Exception as exc:
                verdict = self._failed(stage.name, stage.on_failure, message.origin, exc)
                if verdict is not None:
                    plan.refusal = verdict
                    return

    def _failed(
        self, stage: str, on_failure: OnFailure, origin: Origin, exc: Exception
    ) -> Verdict | None:
        expected = isinstance(exc, StageUnavailable)
        self.log.warning(
            "filter unavailable" if expected else "filter failed",
            extra={"session": origin.session_id, "stage": stage, "policy": on_failure},
            exc_info=None if expected else exc,
        )
        return TRY_LATER if on_failure == "tempfail" else None


def _present(*stages: T | None) -> list[T]:
    return [stage for stage in stages if stage is not None]


def build_filters(ctx: Context) -> FilterChain:
    """The stages the config turns on, in their fixed order."""
    from postoffice.filters import (
        antivirus,
        authentication,
        dnsbl,
        greylist,
        junk,
        ratelimit,
        sieve,
        spamd,
    )

    return FilterChain(
        ctx.logger("filters"),
        session=_present(ratelimit.build(ctx), dnsbl.build(ctx), greylist.build(ctx)),
        message=_present(
            dnsbl.build_tagger(ctx),
            authentication.build(ctx),
            antivirus.build(ctx),
            spamd.build(ctx),
        ),
        recipient=_present(junk.build(ctx), sieve.build(ctx)),
    )
