"""SORT (RFC 5256 §3, RFC 5957): Dovecot's imaptest sort-* scripts replayed on `sort_uids`,
the collation, and `Store.sort_fields` through a real SqliteStore.

The imaptest replay (`run_script`) is shared with test_imap_thread.py: it appends the
script's mbox (uid = position, INTERNALDATE from each "From " line as imaptest does, size =
the CRLF message), follows its STORE / EXPUNGE / APPEND steps and checks every expected
`* SORT` / `* ESEARCH ... PARTIAL` / `* THREAD` line against our functions.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest

from postoffice.imap.commands import SortCriterion
from postoffice.imap.sort import casemap, sort_uids
from postoffice.imap.thread import render_threads, thread_orderedsubject, thread_references
from postoffice.store import open_store
from postoffice.store.mime import parse_message
from postoffice.store.model import NO_FLAGS, AppendTarget, Flag, SortFields, UidSet

IMAPTEST = Path("/work/shared/imaptest/tests")
# SORT key names as the script writes them (upper-cased) -> SortCriterion.key
SORT_KEYS: dict[str, Any] = {key: key for key in get_args(get_type_hints(SortCriterion)["key"])}

# -- the imaptest replay -------------------------------------------------------------------


@dataclass(frozen=True)
class MboxMessage:
    raw: bytes
    internaldate: dt.datetime


def read_mbox(path: Path) -> list[MboxMessage]:
    """Messages of an mbox: "From " lines stripped, LF turned into CRLF."""
    messages: list[MboxMessage] = []
    for chunk in re.split(rb"(?m)^From ", path.read_bytes())[1:]:
        from_line, _, text = chunk.partition(b"\n")
        stamp = from_line.decode().split(None, 1)[1].strip()
        try:
            date = dt.datetime.strptime(stamp, "%a %b %d %H:%M:%S %Y %z")
        except ValueError:
            date = dt.datetime.strptime(stamp, "%a %b %d %H:%M:%S %Y").replace(tzinfo=dt.UTC)
        # the empty line before the next "From " line separates, it is not content
        raw = text.removesuffix(b"\n").replace(b"\n", b"\r\n")
        messages.append(MboxMessage(raw, date))
    return messages


def sort_fields_of(uid: int, message: MboxMessage) -> SortFields:
    parsed = parse_message(message.raw)
    return SortFields(
        uid=uid,
        internaldate=message.internaldate,
        sent_date=parsed.sent_date,
        size=len(message.raw),
        subject=parsed.subject,
        base_subject=parsed.base_subject,
        sort_from=parsed.sort_from,
        sort_to=parsed.sort_to,
        sort_cc=parsed.sort_cc,
        display_from=parsed.display_from,
        display_to=parsed.display_to,
        message_id=parsed.message_id,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
    )


def parse_criteria(text: str) -> tuple[SortCriterion, ...]:
    criteria: list[SortCriterion] = []
    reverse = False
    for word in text.upper().split():
        if word == "REVERSE":
            reverse = True
            continue
        criteria.append(SortCriterion(SORT_KEYS[word], reverse))
        reverse = False
    return tuple(criteria)


def expand_set(text: str) -> list[int]:
    numbers: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        step = 1 if int(hi or lo) >= int(lo) else -1
        numbers.extend(range(int(lo), int(hi or lo) + step, step))
    return numbers


_SORT = re.compile(r"sort (?:return \(partial (\d+):(\d+)\) )?\((.*)\) us-ascii all")
_PARTIAL = re.compile(r"esearch \(tag \$tag\) partial \((\S+) (\S+)\)")
_THREAD = re.compile(r"thread (references|orderedsubject) us-ascii all")


@dataclass(frozen=True)
class Step:
    command: str
    expected: str  # the expected untagged reply after "* ", lower-cased; "" for none


def script_steps(name: str) -> list[Step]:
    """The commands of an imaptest script with the untagged reply each expects."""
    text = (IMAPTEST / name).read_text()
    _, _, body = text.partition("\n\n")
    steps: list[Step] = []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("* ") and steps:
            steps[-1] = Step(steps[-1].command, line[2:].lower())
        elif line.startswith("ok "):
            steps.append(Step(line[3:].lower(), ""))
    return steps


def checked_steps(name: str, kind: str) -> list[int]:
    """Indexes of the steps of `name` that check a reply of `kind` ("sort" or "thread")."""
    if not (IMAPTEST / name).exists():
        return []
    return [i for i, step in enumerate(script_steps(name)) if step.command.startswith(kind + " ")]


def replay(name: str, until: int) -> Iterator[tuple[str, str, str]]:
    """Run the script up to step `until`; yield (command, expected, what we answer)."""
    header = (IMAPTEST / name).read_text().partition("\n\n")[0]
    source = read_mbox(IMAPTEST / f"{name}.mbox")
    appended = 0
    present: list[SortFields] = []
    deleted: set[int] = set()

    def append() -> None:
        nonlocal appended
        present.append(sort_fields_of(appended + 1, source[appended % len(source)]))
        appended += 1

    if "state: created" not in header:
        for _ in source:
            append()
    for step in script_steps(name)[: until + 1]:
        command = step.command
        seq = {f.uid: i for i, f in enumerate(present, 1)}
        if command == "append":
            append()
        elif m := re.fullmatch(r"store (\S+) \+flags \\deleted", command):
            deleted |= {present[n - 1].uid for n in expand_set(m[1])}
        elif command == "expunge":
            present = [f for f in present if f.uid not in deleted]
        elif m := _SORT.fullmatch(command):
            order = [seq[uid] for uid in sort_uids(present, parse_criteria(m[3]))]
            if m[1] is None:
                yield command, step.expected, " ".join(["sort", *map(str, order)])
            else:
                expected = _PARTIAL.fullmatch(step.expected)
                assert expected is not None, step.expected
                lo, hi = sorted((int(m[1]), int(m[2])))
                got = ",".join(map(str, order[lo - 1 : hi]))
                yield command, ",".join(map(str, expand_set(expected[2]))), got
        elif m := _THREAD.fullmatch(command):
            thread = thread_references if m[1] == "references" else thread_orderedsubject
            payload = render_threads(thread(present), seq.__getitem__).decode()
            yield command, step.expected, f"thread {payload}".lower()


def replay_step(name: str, index: int) -> tuple[str, str]:
    *_, (_, expected, got) = replay(name, index)
    return expected, got


def imaptest_params(names: list[str], kind: str) -> list[object]:
    params: list[object] = []
    for name in names:
        for index in checked_steps(name, kind):
            command = script_steps(name)[index].command
            params.append(pytest.param(name, index, id=f"{name}:{index}:{command}"))
    return params


# -- SORT ----------------------------------------------------------------------------------

SORT_SCRIPTS = [
    "sort-addresses",
    "sort-arrival",
    "sort-date",
    "sort-display-from",
    "sort-display-to",
    "sort-partial",
    "sort-size",
    "sort-subject",
]


@pytest.mark.parametrize(("name", "index"), imaptest_params(SORT_SCRIPTS, "sort"))
def test_imaptest_sort(name: str, index: int) -> None:
    expected, got = replay_step(name, index)
    assert got == expected


def fields(uid: int, **changes: Any) -> SortFields:
    return replace(
        SortFields(
            uid=uid,
            internaldate=dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC),
            sent_date=None,
            size=100,
            subject="",
            base_subject="",
            sort_from="",
            sort_to="",
            sort_cc="",
            display_from="",
            display_to="",
            message_id="",
            in_reply_to="",
            references=(),
        ),
        **changes,
    )


def test_date_falls_back_to_internaldate_and_compares_instants() -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    messages = [
        # 10:00 +0200 is 08:00 UTC: earlier than 09:00 UTC although its wall clock is later
        fields(1, sent_date=dt.datetime(2026, 1, 1, 10, tzinfo=plus2)),
        fields(2, sent_date=dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC)),
        fields(3, internaldate=dt.datetime(2026, 1, 1, 8, 30, tzinfo=dt.UTC)),
    ]
    assert sort_uids(messages, [SortCriterion("DATE")]) == [1, 3, 2]
    assert sort_uids(messages, [SortCriterion("ARRIVAL")]) == [3, 1, 2]


def test_ties_stay_in_uid_order_under_reverse() -> None:
    messages = [fields(3, size=5), fields(1, size=5), fields(2, size=9)]
    assert sort_uids(messages, [SortCriterion("SIZE", reverse=True)]) == [2, 1, 3]
    assert sort_uids(messages, []) == [1, 2, 3]


def test_later_criteria_break_ties_of_earlier_ones() -> None:
    messages = [
        fields(1, sort_from="bob", size=1),
        fields(2, sort_from="alice", size=1),
        fields(3, sort_from="Bob", size=2),
    ]
    criteria = [SortCriterion("FROM"), SortCriterion("SIZE", reverse=True)]
    assert sort_uids(messages, criteria) == [2, 3, 1]


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        ("a", "B"),  # case does not count
        ("Z", "["),  # ASCII is compared upper-cased: "[" and "_" after the letters
        ("ETAGE", "étage"),  # a letter with a diacritic sorts right after the letter alone
        ("étage", "F"),
        ("ﬁle", "FILF"),  # compatibility decompositions count
        ("ﬁle", "FILE "),
    ],
)
def test_casemap_orders(smaller: str, larger: str) -> None:
    assert casemap(smaller) < casemap(larger)


@pytest.mark.parametrize(
    ("a", "b"), [("Straße", "STRAßE"), ("ǆ", "Ǆ"), ("É", "e\u0301"), ("ﬁ", "FI")]
)
def test_casemap_equal(a: str, b: str) -> None:
    assert casemap(a) == casemap(b)


def test_casemap_leaves_hangul_syllables_whole() -> None:
    # RFC 5051 decomposes by UnicodeData.txt, which has no entry for Hangul syllables
    assert casemap("한") == "한"


# -- Store.sort_fields ---------------------------------------------------------------------


async def test_store_sort_fields(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        await store.add_domain("example.test")
        account = await store.add_account("bob@example.test", "hash", None)
        inbox = await store.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        first = (
            b"From: =?utf-8?q?J=C3=BCrgen?= <Juergen@Example.test>\r\n"
            b"To: Bob <bob@example.test>\r\n"
            b"Cc: carol@example.test, dave@example.test\r\n"
            b"Subject: Re: [list] Lunch (fwd)\r\n"
            b"Date: Mon, 30 Nov 2026 10:00:00 +0100\r\n"
            b"Message-ID: <b@example.test>\r\n"
            b"In-Reply-To: <a@example.test>\r\n"
            b"References: <z@example.test>\r\n <a@example.test>\r\n"
            b"\r\n"
            b"Yes.\r\n"
        )
        second = b"Subject: no date\r\n\r\nbody\r\n"
        arrival = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
        for raw, flags in ((first, NO_FLAGS), (second, Flag.DELETED), (second, NO_FLAGS)):
            await store.append(raw, [AppendTarget(inbox.id, flags)], internaldate=arrival)
        await store.expunge(inbox.id)

        got = await store.sort_fields(inbox.id, UidSet.span(1, 10))
        assert [f.uid for f in got] == [1, 3]
        one, three = got
        assert one == SortFields(
            uid=1,
            internaldate=arrival,
            sent_date=dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC),
            size=len(first),
            subject="Re: [list] Lunch (fwd)",
            base_subject="Lunch",
            sort_from="juergen",
            sort_to="bob",
            sort_cc="carol",
            display_from="Jürgen",
            display_to="Bob",
            message_id="<b@example.test>",
            in_reply_to="<a@example.test>",
            references=("<z@example.test>", "<a@example.test>"),
        )
        assert one.internaldate.utcoffset() == dt.timedelta(hours=-5)
        assert three.sent_date is None
        assert (three.subject, three.size, three.message_id, three.references) == (
            "no date",
            len(second),
            "",
            (),
        )
        # a set of many ranges takes the one-span-and-filter path
        many = UidSet.of(list(range(3, 100, 2)))
        assert [f.uid for f in await store.sort_fields(inbox.id, many)] == [3]
        assert await store.sort_fields(inbox.id, UidSet.of([2])) == []
    finally:
        await store.close()
