"""Running a compiled Sieve script against one message (RFC 5228 §2.10 and the extensions).

Pure: the message arrives as `MessageFacts` (headers already decoded, the mailboxes that
exist already looked up) and the decisions leave as an `Outcome`; the stage does the I/O.
A runtime error (a limit, an action conflict) raises SieveRuntimeError, and the caller then
files the message as if there were no script (RFC 5228 §2.10.6).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.message
import email.policy
import email.utils
import hashlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from postoffice.filters.sieve.actions import (
    Action,
    Discard,
    Fileinto,
    Keep,
    Outcome,
    Redirect,
    Reject,
    Vacation,
)
from postoffice.filters.sieve.comparators import (
    contains,
    is_equal,
    matches,
    order,
    relation_holds,
)
from postoffice.filters.sieve.script import Command, Script

_VARIABLE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*|[0-9]+)\}")
_ADDRESS: Final = re.compile(r"[^@\s]+@[^@\s]+")
_WILDCARDS: Final = re.compile(r"([*?\\])")
DEFAULT_VACATION_DAYS: Final = 7  # RFC 5230 §4.1
MAX_MATCH_VARIABLES: Final = 10  # RFC 5229 §3.2: ${0} to ${9} at least


class SieveRuntimeError(Exception):
    """The script cannot finish; its actions are dropped and the implicit keep applies."""


class _Stop(Exception):
    pass


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """The message as the script sees it."""

    headers: Sequence[tuple[str, str]]  # (name, decoded and unfolded value), in order
    raw: bytes
    sender: str  # envelope MAIL FROM, "" for the null path
    recipient: str  # the address that reached the account
    now: dt.datetime
    mailboxes: frozenset[str] = frozenset()  # names that exist, for mailboxexists


@dataclass(frozen=True, slots=True)
class Limits:
    max_actions: int
    max_redirects: int
    cpu_seconds: float
    vacation_min_days: int
    vacation_max_days: int


def _flag_list(values: Sequence[str]) -> list[str]:
    """RFC 5232 §3: flags are space-separated; each once, compared without case."""
    found: dict[str, str] = {}
    for value in values:
        for flag in value.split():
            found.setdefault(flag.lower(), flag)
    return list(found.values())


def _address_part(address: str, part: str) -> str | None:
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    match part:
        case ":localpart":
            return local
        case ":domain":
            return domain
        case ":user":
            return local.split("+", 1)[0]
        case ":detail":
            # RFC 5233 §4: no separator, no detail (the test fails rather than match "")
            return local.split("+", 1)[1] if "+" in local else None
        case _:
            return address


def date_part(when: dt.datetime, part: str) -> str | None:
    """RFC 5260 §4.2."""
    match part.lower():
        case "year":
            return f"{when.year:04d}"
        case "month":
            return f"{when.month:02d}"
        case "day":
            return f"{when.day:02d}"
        case "date":
            return when.strftime("%Y-%m-%d")
        case "julian":
            return str((when.date() - dt.date(1858, 11, 17)).days)
        case "hour":
            return f"{when.hour:02d}"
        case "minute":
            return f"{when.minute:02d}"
        case "second":
            return f"{when.second:02d}"
        case "time":
            return when.strftime("%H:%M:%S")
        case "iso8601":
            return when.replace(microsecond=0).isoformat()
        case "std11":
            return email.utils.format_datetime(when)
        case "zone":
            return when.strftime("%z")
        case "weekday":
            return str(when.isoweekday() % 7)  # 0 is Sunday
        case _:
            return None


def _zone(text: str) -> dt.tzinfo | None:
    if not re.fullmatch(r"[+-][0-9]{4}", text):
        return None
    minutes = int(text[1:3]) * 60 + int(text[3:5])
    return dt.timezone(dt.timedelta(minutes=-minutes if text[0] == "-" else minutes))


def _leaf_texts(raw: bytes, types: Sequence[str]) -> Iterator[str]:
    """RFC 5173 §5.2: the decoded leaf parts whose type matches ("" is any)."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    for part in parsed.walk():
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        if not any(
            wanted == "" or wanted.lower() in (kind, kind.split("/")[0]) for wanted in types
        ):
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            charset = part.get_content_charset() or "utf-8"
            try:
                yield payload.decode(charset, errors="replace")
            except LookupError:
                yield payload.decode("utf-8", errors="replace")


class _Run:
    def __init__(self, script: Script, facts: MessageFacts, limits: Limits) -> None:
        self.script = script
        self.facts = facts
        self.limits = limits
        self.started = time.monotonic()
        self.variables: dict[str, str] = {}
        self.match_values: list[str] = []
        self.outcome = Outcome()
        self.flags: list[str] = []
        self.uses_variables = "variables" in script.extensions

    # -- strings ---------------------------------------------------------------------------

    def expand(self, text: str) -> str:
        """RFC 5229 §3: ${name} and ${digit}; unknown names are empty."""
        if not self.uses_variables or "${" not in text:
            return text
        return _VARIABLE.sub(self._variable, text)

    def _variable(self, found: re.Match[str]) -> str:
        name = found.group(1)
        if name.isdigit():
            index = int(name)
            return self.match_values[index] if index < len(self.match_values) else ""
        return self.variables.get(name.lower(), "")

    def expand_all(self, texts: Sequence[str]) -> list[str]:
        return [self.expand(text) for text in texts]

    # -- control ---------------------------------------------------------------------------

    def tick(self) -> None:
        if time.monotonic() - self.started >= self.limits.cpu_seconds:
            raise SieveRuntimeError("the script ran out of time")

    def block(self, commands: Sequence[Command]) -> None:
        ran_branch = False
        for command in commands:
            self.tick()
            if command.name == "if":
                ran_branch = self.branch(command)
            elif command.name == "elsif":
                ran_branch = ran_branch or self.branch(command)
            elif command.name == "else":
                if not ran_branch:
                    self.block(command.block)
            else:
                self.action(command)

    def branch(self, command: Command) -> bool:
        if not self.test(command.tests[0]):
            return False
        self.block(command.block)
        return True

    # -- actions (RFC 5228 §4, one method per command) -----------------------------------

    def action(self, command: Command) -> None:
        handler: Callable[[Command], None] = getattr(self, f"cmd_{command.name}")
        handler(command)

    def add(self, action: Action) -> None:
        actions = self.outcome.actions
        if len(actions) >= self.limits.max_actions:
            raise SieveRuntimeError(f"more than {self.limits.max_actions} actions")
        delivering = (Keep, Fileinto, Redirect, Vacation)
        # RFC 5429 §2.1: a refusal cannot go with delivering the message, nor with a reply
        if isinstance(action, Reject) and any(
            isinstance(a, (Reject, *delivering)) for a in actions
        ):
            raise SieveRuntimeError("reject cannot be combined with other deliveries")
        if isinstance(action, delivering) and any(isinstance(a, Reject) for a in actions):
            raise SieveRuntimeError("reject cannot be combined with other deliveries")
        if isinstance(action, Vacation) and any(isinstance(a, Vacation) for a in actions):
            raise SieveRuntimeError("vacation can be used only once")  # RFC 5230 §4.7
        if isinstance(action, Redirect):
            redirects = sum(isinstance(a, Redirect) for a in actions)
            if redirects >= self.limits.max_redirects:
                raise SieveRuntimeError(f"more than {self.limits.max_redirects} redirects")
        actions.append(action)

    def action_flags(self, command: Command) -> tuple[str, ...]:
        explicit = command.tag_strings(":flags")
        if explicit is not None:
            return tuple(_flag_list(self.expand_all(explicit)))
        return tuple(self.flags)

    def cmd_stop(self, command: Command) -> None:
        raise _Stop

    def cmd_keep(self, command: Command) -> None:
        self.add(Keep(self.action_flags(command)))
        self.outcome.implicit_keep = False

    def cmd_discard(self, command: Command) -> None:
        self.add(Discard())
        self.outcome.implicit_keep = False

    def cmd_fileinto(self, command: Command) -> None:
        mailbox = self.expand(command.string(0))
        if not mailbox:
            raise SieveRuntimeError("fileinto an empty mailbox name")
        copy = command.has(":copy")
        self.add(Fileinto(mailbox, self.action_flags(command), command.has(":create"), copy))
        if not copy:
            self.outcome.implicit_keep = False

    def cmd_redirect(self, command: Command) -> None:
        address = self.expand(command.string(0)).strip()
        if not _ADDRESS.fullmatch(address):
            raise SieveRuntimeError(f"redirect to an invalid address {address!r}")
        copy = command.has(":copy")
        self.add(Redirect(address, copy))
        if not copy:
            self.outcome.implicit_keep = False

    def cmd_reject(self, command: Command) -> None:
        self.add(Reject(self.expand(command.string(0)), extended=False))
        self.outcome.implicit_keep = False

    def cmd_ereject(self, command: Command) -> None:
        self.add(Reject(self.expand(command.string(0)), extended=True))
        self.outcome.implicit_keep = False

    def cmd_vacation(self, command: Command) -> None:
        reason = self.expand(command.string(0))
        subject = command.tag_string(":subject")
        sender = command.tag_string(":from")
        handle = command.tag_string(":handle")
        subject = None if subject is None else self.expand(subject)
        sender = None if sender is None else self.expand(sender)
        if handle is None:
            # RFC 5230 §4.2: without :handle, replies differing in content count apart
            seed = "\0".join((reason, subject or "", sender or "", str(command.has(":mime"))))
            handle = hashlib.sha256(seed.encode()).hexdigest()[:32]
        days = command.tag_number(":days")
        days = DEFAULT_VACATION_DAYS if days is None else days
        days = min(max(days, self.limits.vacation_min_days), self.limits.vacation_max_days)
        addresses = tuple(self.expand_all(command.tag_strings(":addresses") or ()))
        self.add(Vacation(reason, subject, sender, addresses, command.has(":mime"), handle, days))

    def cmd_set(self, command: Command) -> None:
        """RFC 5229 §4: modifiers apply from the highest precedence down."""
        value = self.expand(command.string(1))
        match command.choice("case", ""):
            case ":lower":
                value = value.lower()
            case ":upper":
                value = value.upper()
        match command.choice("first", ""):
            case ":lowerfirst":
                value = value[:1].lower() + value[1:]
            case ":upperfirst":
                value = value[:1].upper() + value[1:]
        if command.has(":quotewildcard"):
            value = _WILDCARDS.sub(r"\\\1", value)
        if command.has(":length"):
            value = str(len(value))
        self.variables[command.string(0).lower()] = value

    def _flag_target(self, command: Command) -> tuple[str, list[str]]:
        name = self.expand(command.string(0)).lower()
        current = _flag_list([self.variables.get(name, "")]) if name else self.flags
        return name, current

    def _set_flags(self, name: str, flags: list[str]) -> None:
        if name:
            self.variables[name] = " ".join(flags)
        else:
            self.flags = flags

    def cmd_setflag(self, command: Command) -> None:
        name, _ = self._flag_target(command)
        self._set_flags(name, _flag_list(self.expand_all(command.strings(1))))

    def cmd_addflag(self, command: Command) -> None:
        name, current = self._flag_target(command)
        self._set_flags(name, _flag_list([*current, *self.expand_all(command.strings(1))]))

    def cmd_removeflag(self, command: Command) -> None:
        name, current = self._flag_target(command)
        gone = {flag.lower() for flag in _flag_list(self.expand_all(command.strings(1)))}
        self._set_flags(name, [flag for flag in current if flag.lower() not in gone])

    # -- tests (RFC 5228 §5, one method per test) -----------------------------------------

    def test(self, command: Command) -> bool:
        self.tick()
        handler: Callable[[Command], bool] = getattr(self, f"test_{command.name}")
        return handler(command)

    def compare(self, command: Command, values: Sequence[str], keys: Sequence[str]) -> bool:
        """The match type and comparator of `command`, any value against any key."""
        comparator = command.tag_string(":comparator") or "i;ascii-casemap"
        match_type = command.choice("match", ":is")
        keys = self.expand_all(keys)
        if match_type == ":count":
            relation = command.tag_string(":count") or "eq"
            counted = str(len(values))
            return any(relation_holds(relation, order(counted, key, comparator)) for key in keys)
        for value in values:
            for key in keys:
                if match_type == ":value":
                    relation = command.tag_string(":value") or "eq"
                    if relation_holds(relation, order(value, key, comparator)):
                        return True
                elif match_type == ":contains":
                    if contains(value, key, comparator):
                        return True
                elif match_type == ":matches":
                    captured = matches(value, key, comparator)
                    if captured is not None:
                        if self.uses_variables:
                            self.match_values = [value, *captured][:MAX_MATCH_VARIABLES]
                        return True
                elif is_equal(value, key, comparator):
                    return True
        return False

    def header_values(self, names: Sequence[str]) -> list[str]:
        wanted = {name.lower() for name in self.expand_all(names)}
        return [value for name, value in self.facts.headers if name.lower() in wanted]

    def test_true(self, command: Command) -> bool:
        return True

    def test_false(self, command: Command) -> bool:
        return False

    def test_not(self, command: Command) -> bool:
        return not self.test(command.tests[0])

    def test_allof(self, command: Command) -> bool:
        return all(self.test(test) for test in command.tests)

    def test_anyof(self, command: Command) -> bool:
        return any(self.test(test) for test in command.tests)

    def test_exists(self, command: Command) -> bool:
        present = {name.lower() for name, _ in self.facts.headers}
        return all(name.lower() in present for name in self.expand_all(command.strings(0)))

    def test_size(self, command: Command) -> bool:
        limit = command.number(0)
        size = len(self.facts.raw)
        return size > limit if command.choice("size", ":over") == ":over" else size < limit

    def test_header(self, command: Command) -> bool:
        return self.compare(command, self.header_values(command.strings(0)), command.strings(1))

    def parts(self, command: Command, addresses: Sequence[str]) -> list[str]:
        part = command.choice("part", ":all")
        found = [_address_part(address, part) for address in addresses]
        return [value for value in found if value is not None]

    def test_address(self, command: Command) -> bool:
        values = self.header_values(command.strings(0))
        addresses = [address for _, address in email.utils.getaddresses(values) if address]
        return self.compare(command, self.parts(command, addresses), command.strings(1))

    def test_envelope(self, command: Command) -> bool:
        addresses: list[str] = []
        for part in self.expand_all(command.strings(0)):
            addresses.append(self.facts.sender if part.lower() == "from" else self.facts.recipient)
        return self.compare(command, self.parts(command, addresses), command.strings(1))

    def test_body(self, command: Command) -> bool:
        transform = command.choice("transform", ":text")
        if transform == ":raw":
            end = self.facts.raw.find(b"\r\n\r\n")
            body = b"" if end < 0 else self.facts.raw[end + 4 :]
            texts = [body.decode("utf-8", errors="replace")]
        else:
            types = command.tag_strings(":content") if transform == ":content" else ("text",)
            texts = list(_leaf_texts(self.facts.raw, self.expand_all(types or ())))
        return self.compare(command, texts, command.strings(0))

    def test_string(self, command: Command) -> bool:
        values = self.expand_all(command.strings(0))
        if command.choice("match", ":is") == ":count":
            values = [value for value in values if value]  # RFC 5229 §5
        return self.compare(command, values, command.strings(1))

    def test_hasflag(self, command: Command) -> bool:
        names = [name.lower() for name in self.expand_all(command.strings(0))]
        flags = (
            _flag_list([self.variables.get(name, "") for name in names]) if names else self.flags
        )
        return self.compare(command, flags, command.strings(1))

    def _in_zone(self, command: Command, when: dt.datetime) -> dt.datetime:
        if command.has(":originalzone"):
            return when
        zone_text = command.tag_string(":zone")
        zone = None if zone_text is None else _zone(self.expand(zone_text))
        return when.astimezone(zone)

    def test_date(self, command: Command) -> bool:
        values = self.header_values([command.string(0)])
        if not values:
            return False
        try:
            when = email.utils.parsedate_to_datetime(values[0])
        except (TypeError, ValueError):
            return False
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)  # "-0000": RFC 5322 §3.3, UTC of unknown origin
        part = date_part(self._in_zone(command, when), self.expand(command.string(1)))
        return part is not None and self.compare(command, [part], command.strings(2))

    def test_currentdate(self, command: Command) -> bool:
        part = date_part(self._in_zone(command, self.facts.now), self.expand(command.string(0)))
        return part is not None and self.compare(command, [part], command.strings(1))

    def test_mailboxexists(self, command: Command) -> bool:
        def exists(name: str) -> bool:
            return name.upper() == "INBOX" or name in self.facts.mailboxes

        return all(exists(name) for name in self.expand_all(command.strings(0)))


def run(script: Script, facts: MessageFacts, limits: Limits) -> Outcome:
    """The script's decisions; SieveRuntimeError when it cannot finish."""
    execution = _Run(script, facts, limits)
    with contextlib.suppress(_Stop):
        execution.block(script.commands)
    execution.outcome.flags = tuple(execution.flags)
    return execution.outcome
