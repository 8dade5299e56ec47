"""The "junk" recipient stage: each account's own Bayesian classifier (DESIGN §4, issue 8).

Our own because the one Python classifier there was, SpamBayes, is Python 2 only; the
method is small (bayes.py), the tokenizer is ours (tokens.py), the counts are per account in
the store (store/junk.py) and users teach it by moving mail in and out of Junk (training.py).

Mail from users who logged in is never classified.  Each local copy gets X-Spam-Score,
X-Spam-Status and X-Spam-Tokens (so a Sieve script can test them), and goes to the
account's Junk mailbox when the score reaches the account's threshold, or when an earlier
stage (DMARC quarantine, a DNSBL tag, rspamd/spamd) marked the message as junk.  An account
that has not been trained on enough spam and ham gets no decision and no header.
When rspamd or spamd scored the message too (findings.spam_score, 0..1), the higher of the
two scores counts.
"""

from __future__ import annotations

import asyncio
import weakref

from postoffice.config import JunkConfig
from postoffice.context import Context
from postoffice.filters.api import JUNK_FOLDER, LocalPlan, Message, OnFailure, rejected
from postoffice.filters.junk.bayes import Score, classify
from postoffice.filters.junk.tokens import tokenize
from postoffice.store.api import JunkTotals, Store

__all__ = ["JunkFilter", "build"]

_TOKENS_HEADER_CHARS = 160


def _clues_header(score: Score) -> str:
    """The strongest tokens, short enough for one header line, ASCII only."""
    shown: list[str] = []
    length = 0
    for token, probability in score.clues:
        item = f"{token} {probability:.2f}"
        if not item.isascii():
            continue
        if length + len(item) > _TOKENS_HEADER_CHARS:
            break
        shown.append(item)
        length += len(item) + 2
    return ", ".join(shown)


class JunkFilter:
    name = "junk"
    on_failure: OnFailure = "accept"

    def __init__(self, store: Store, config: JunkConfig) -> None:
        self.store = store
        self.config = config
        # One tokenization per message, however many local accounts receive it.
        self._tokens: weakref.WeakKeyDictionary[Message, asyncio.Task[list[str]]] = (
            weakref.WeakKeyDictionary()
        )

    async def score(self, message: Message, account_id: int, totals: JunkTotals) -> Score | None:
        """The account's classifier's score for the message; None while it is untrained."""
        if min(totals.spam, totals.ham) < self.config.min_trained:
            return None
        tokens = self._tokens.get(message)
        if tokens is None:
            tokens = asyncio.ensure_future(asyncio.to_thread(tokenize, message.raw))
            self._tokens[message] = tokens
        counts = await self.store.junk.counts(account_id, await tokens)
        return classify(counts, totals.spam, totals.ham)

    async def plan(self, message: Message, plan: LocalPlan) -> None:
        if message.origin.account_id is not None:
            return
        account = plan.account
        untrained = min(account.junk_spam, account.junk_ham) < self.config.min_trained
        if untrained and plan.findings.spam_score is None:
            # Known from the account's row: no query, no header, no decision of ours.
            if plan.findings.junk:
                plan.keep_into = JUNK_FOLDER
            return
        totals = await self.store.junk.totals(plan.account.id)
        bayes = await self.score(message, plan.account.id, totals)
        scores = [plan.findings.spam_score] if plan.findings.spam_score is not None else []
        if bayes is not None:
            scores.append(bayes.probability)
        if scores:
            probability = max(scores)
            threshold = totals.threshold if totals.threshold is not None else self.config.threshold
            spam = plan.findings.junk or probability >= threshold
            plan.headers.append(("X-Spam-Score", f"{probability:.2f}"))
            plan.headers.append(
                (
                    "X-Spam-Status",
                    f"{'Yes' if spam else 'No'}, score={probability:.2f} threshold={threshold:.2f}",
                )
            )
            if bayes is not None and bayes.clues:
                plan.headers.append(("X-Spam-Tokens", _clues_header(bayes)))
            # 1 means never, though a score can round to 1.0.
            if self.config.reject_threshold < 1.0 and probability >= self.config.reject_threshold:
                plan.refusal = rejected("message refused as spam")
                return
        else:
            # Untrained (`postoffice junk stats` says how far): no header, so an account
            # that never trains gets its mail exactly as sent.
            spam = plan.findings.junk
        if spam:
            plan.keep_into = JUNK_FOLDER


def build(ctx: Context) -> JunkFilter | None:
    return JunkFilter(ctx.store, ctx.config.junk) if ctx.config.junk.enabled else None
