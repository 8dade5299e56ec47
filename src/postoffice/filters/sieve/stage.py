"""The "sieve" recipient stage: the account's active script decides where its copy goes.

It runs after the junk stage, on the message as it will be stored (the headers earlier
stages add come first), and turns the script's actions into the account's `LocalPlan`.  A
script that no longer compiles or fails while running leaves the plan as it was: the
message is kept (RFC 5228 §2.10.6), never lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email.errors
import email.header
import email.utils
import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Final

from postoffice.config import SieveConfig
from postoffice.context import Clock
from postoffice.filters.api import AutoReply, FileInto, LocalPlan, Message, OnFailure, rejected
from postoffice.filters.sieve.actions import (
    Fileinto,
    Keep,
    Redirect,
    Reject,
    Vacation,
)
from postoffice.filters.sieve.grammar import SieveError
from postoffice.filters.sieve.interpreter import (
    Limits,
    MessageFacts,
    SieveRuntimeError,
    run,
)
from postoffice.filters.sieve.script import Script, compile_script
from postoffice.filters.sieve.vacation import build_reply, reply_allowed
from postoffice.log import BoundLogger
from postoffice.store.api import Store
from postoffice.store.model import FLAG_NAMES, NO_FLAGS, Flag, SpecialUse

_SYSTEM_FLAGS: Final = {name.lower(): flag for flag, name in FLAG_NAMES.items()}
# RFC 3501 §9 atom: what a keyword may hold
_KEYWORD: Final = re.compile(r"[^\x00-\x20\x7f(){%*\"\\\]]+")
_FOLD: Final = re.compile(r"\r?\n(?=[ \t])")
COMPILED_CACHE_SIZE: Final = 256


def decode_header_value(value: str) -> str:
    """Unfolded, RFC 2047 words decoded: what a script compares."""
    value = _FOLD.sub("", value).strip()
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, UnicodeError, email.errors.HeaderParseError):
        return value


def imap_flags(names: Iterable[str]) -> tuple[Flag, frozenset[str]]:
    """System flags and keywords from imap4flags' strings; \\Recent and malformed ones go."""
    flags = NO_FLAGS
    keywords: set[str] = set()
    for name in names:
        system = _SYSTEM_FLAGS.get(name.lower())
        if system is not None:
            flags |= system
        elif not name.startswith("\\") and _KEYWORD.fullmatch(name):
            keywords.add(name)
    return flags, frozenset(keywords)


def _with_flags(target: FileInto, names: Iterable[str]) -> FileInto:
    """The keep's copy (INBOX, or Junk as the junk stage chose) with imap4flags' flags too."""
    flags, keywords = imap_flags(names)
    return dataclasses.replace(
        target, flags=target.flags | flags, keywords=target.keywords | keywords
    )


class SieveFilter:
    name = "sieve"
    on_failure: OnFailure = "accept"

    def __init__(self, store: Store, config: SieveConfig, clock: Clock, log: BoundLogger) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.log = log
        self.limits = Limits(
            max_actions=config.max_actions,
            max_redirects=config.max_redirects,
            cpu_seconds=config.cpu_seconds,
            vacation_min_days=config.vacation_min_days,
            vacation_max_days=config.vacation_max_days,
        )
        # Compiling costs more than running; scripts change rarely.
        self._compiled: OrderedDict[tuple[int, str], Script | SieveError] = OrderedDict()

    def compiled(self, account_id: int, content: str) -> Script | SieveError:
        key = (account_id, hashlib.sha256(content.encode()).hexdigest())
        found = self._compiled.get(key)
        if found is None:
            try:
                found = compile_script(content)
            except SieveError as exc:
                found = exc
            self._compiled[key] = found
            if len(self._compiled) > COMPILED_CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(key)
        return found

    async def plan(self, message: Message, plan: LocalPlan) -> None:
        if not plan.account.sieve_active:
            return  # read with the account by routing: no query for the common case
        active = await self.store.sieve.active(plan.account.id)
        if active is None:
            return
        script_name, content = active
        where = {"account": plan.account.address, "script": script_name}
        script = self.compiled(plan.account.id, content)
        if isinstance(script, SieveError):
            # ManageSieve checks scripts, but one stored before an upgrade may not compile
            self.log.warning("sieve script does not compile", extra={**where, "error": str(script)})
            return
        headers = [
            (name, decode_header_value(value))
            for name, value in [*plan.findings.headers, *plan.headers, *message.headers.items()]
        ]
        mailboxes: frozenset[str] = frozenset()
        if script.tests_mailboxes:
            found = await self.store.list_mailboxes(plan.account.id)
            mailboxes = frozenset(mailbox.name for mailbox in found)
        now = self.clock.now()
        facts = MessageFacts(
            headers, message.raw, message.envelope.sender, plan.delivered_to, now, mailboxes
        )
        try:
            # Off the loop: a script may compute for up to [sieve] cpu_seconds, and the loop
            # holds every other connection of the process.
            outcome = await asyncio.to_thread(run, script, facts, self.limits)
        except SieveRuntimeError as exc:
            self.log.warning(
                "sieve script failed, message kept", extra={**where, "error": str(exc)}
            )
            return
        uses_flags = "imap4flags" in script.extensions
        for action in outcome.actions:
            if isinstance(action, Keep):
                plan.files.append(_with_flags(plan.keep_into, action.flags))
            elif isinstance(action, Fileinto):
                flags, keywords = imap_flags(action.flags)
                plan.files.append(FileInto(action.mailbox, flags, keywords, action.create))
            elif isinstance(action, Redirect):
                plan.redirects.append(action.address)
            elif isinstance(action, Reject):
                plan.refusal = rejected(action.reason)
            elif isinstance(action, Vacation):
                await self.vacation(action, message, plan, headers, now)
        if not outcome.implicit_keep:
            plan.keep = False
        elif uses_flags:
            # RFC 5232 §3: the implicit keep takes the internal variable's flags
            plan.keep_into = _with_flags(plan.keep_into, outcome.flags)

    async def vacation(
        self,
        action: Vacation,
        message: Message,
        plan: LocalPlan,
        headers: Sequence[tuple[str, str]],
        now: dt.datetime,
    ) -> None:
        if plan.findings.junk or plan.keep_into.special_use is SpecialUse.JUNK:
            return  # spam's sender is forged more often than not: a reply would be backscatter
        sender = message.envelope.sender
        owned = [plan.account.address, plan.delivered_to]
        if not reply_allowed(sender, headers, [*owned, *action.addresses]):
            return
        period = dt.timedelta(days=action.days)
        if not await self.store.vacation.claim(plan.account.id, action.handle, sender, now, period):
            return
        # :from may name only an address the account receives at, or outbound checks refuse it
        from_address = email.utils.parseaddr(action.sender or "")[1].lower()
        if from_address not in {address.lower() for address in owned}:
            action = dataclasses.replace(action, sender=None)
        raw = build_reply(
            action, account_address=plan.account.address, sender=sender, headers=headers, now=now
        )
        plan.replies.append(AutoReply(recipient=sender, raw=raw))
