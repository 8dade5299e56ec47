"""THREAD (RFC 5256 §2): Dovecot's imaptest thread* scripts replayed, the REFERENCES rules
one by one, and the THREAD response payload."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from postoffice.imap.thread import (
    ThreadNode,
    render_threads,
    thread_orderedsubject,
    thread_references,
)
from postoffice.store.model import SortFields
from test_imap_sort import fields as sort_fields
from test_imap_sort import imaptest_params, replay_step

START = dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)
THREAD_SCRIPTS = [
    "thread",
    "thread2",
    "thread3",
    "thread4",
    "thread5",
    "thread6",
    "thread7",
    "thread8",
    "thread-orderedsubject",
    "thread-orderedsubject2",
]


@pytest.mark.parametrize(("name", "index"), imaptest_params(THREAD_SCRIPTS, "thread"))
def test_imaptest_thread(name: str, index: int) -> None:
    expected, got = replay_step(name, index)
    assert got == expected


def msg(uid: int, message_id: str = "", *references: str, **changes: Any) -> SortFields:
    """A message sent `uid` minutes after 10:00 (unless told), so UID order is date order."""
    changes.setdefault("sent_date", START + dt.timedelta(minutes=uid))
    return sort_fields(uid, message_id=message_id, references=references, **changes)


def payload(threads: list[ThreadNode]) -> str:
    return render_threads(threads, lambda uid: uid).decode()


def references(*messages: SortFields) -> str:
    return payload(thread_references(messages))


def test_render() -> None:
    threads = [
        ThreadNode(2),
        ThreadNode(
            3,
            (
                ThreadNode(
                    6,
                    (
                        ThreadNode(4, (ThreadNode(23),)),
                        ThreadNode(44, (ThreadNode(7, (ThreadNode(96),)),)),
                    ),
                ),
            ),
        ),
        ThreadNode(None, (ThreadNode(8), ThreadNode(9, (ThreadNode(10),)))),
    ]
    # RFC 5256 §4's example, and a dummy root, which has no number of its own
    assert payload(threads) == "(2)(3 6 (4 23)(44 7 96))((8)(9 10))"
    assert render_threads(threads[:1], lambda uid: uid + 100) == b"(102)"
    assert render_threads([], lambda uid: uid) == b""


def test_render_and_thread_deeper_than_the_recursion_limit() -> None:
    count = 3000
    chain = [msg(1, "<m1>")] + [msg(n, f"<m{n}>", f"<m{n - 1}>") for n in range(2, count + 1)]
    assert references(*chain) == "(" + " ".join(map(str, range(1, count + 1))) + ")"
    # a spine 1, 2, 4, 6, ... with a leaf reply 3, 5, 7, ... at every step: nested lists
    comb = [msg(1, "<m1>")] + [
        msg(n, f"<m{n}>", f"<m{n - 1 if n % 2 or n == 2 else n - 2}>") for n in range(2, count + 1)
    ]
    text = references(*comb)
    assert text.startswith("(1 2 (3)(4 (5)(6 (7)(8 ")
    assert text.count("(") == text.count(")") == count - 1
    assert sorted(map(int, text.replace("(", " ").replace(")", " ").split())) == list(
        range(1, count + 1)
    )


def test_references_header_links_the_chain_and_the_message() -> None:
    # (1A) <a> is the parent of <b>, <b> of <c>, (1B) <c> of <x>; then <c> arrives without
    # references and (1B) takes it from <b>: the dummies <a> and <b> are left empty
    assert references(msg(1, "<x>", "<a>", "<b>", "<c>"), msg(2, "<c>")) == "(2 1)"


def test_in_reply_to_is_used_without_references() -> None:
    messages = [
        msg(1, "<a>"),
        msg(2, "<b>", in_reply_to="<a>"),
        # References wins over In-Reply-To
        msg(3, "<c>", "<a>", in_reply_to="<b>"),
    ]
    assert references(*messages) == "(1 (2)(3))"


def test_existing_parent_is_kept_in_step_1a() -> None:
    # message 3 claims <b>'s parent is <z>; <b> already has <a>
    messages = [msg(1, "<a>"), msg(2, "<b>", "<a>"), msg(3, "<c>", "<z>", "<b>")]
    assert references(*messages) == "(1 2 3)"


def test_message_own_references_override_a_guessed_parent() -> None:
    # message 1 says <b> follows <a>; <b> itself says it follows <c>
    messages = [msg(1, "<x>", "<a>", "<b>"), msg(2, "<b>", "<c>"), msg(3, "<c>")]
    assert references(*messages) == "(3 2 1)"


def test_loops_are_not_linked() -> None:
    messages = [msg(1, "<a>", "<b>"), msg(2, "<b>", "<a>"), msg(3, "<c>", "<c>")]
    # <b> under <a> would close the loop <a> -> <b> -> <a>: the second link is refused
    assert references(*messages) == "(2 1)(3)"


def test_duplicate_message_ids_get_unique_ones() -> None:
    messages = [msg(1, "<a>"), msg(2, "<a>"), msg(3, "<b>", "<a>")]
    # the first holder keeps the id; the duplicate is a thread of its own
    assert references(*messages) == "(1 3)(2)"


def test_dummies_are_pruned() -> None:
    # (4A) a dummy without children vanishes; (4B) one child replaces its dummy parent
    assert references(msg(1, "<b>", "<a>")) == "(1)"
    # (4B) below the root a dummy's children are spliced into its place
    messages = [msg(1, "<r>"), msg(2, "<x>", "<r>", "<gone>"), msg(3, "<y>", "<r>", "<gone>")]
    assert references(*messages) == "(1 (2)(3))"
    # (4B) but at the root a dummy with several children stays
    assert references(msg(1, "<x>", "<gone>"), msg(2, "<y>", "<gone>")) == "((1)(2))"


def test_siblings_and_roots_sort_by_sent_date_then_uid() -> None:
    early = dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC)
    messages = [
        msg(1, "<r>"),
        msg(2, "<x>", "<r>"),
        msg(3, "<y>", "<r>", sent_date=early),
        msg(4, "<z>", sent_date=None, internaldate=early),  # no Date: INTERNALDATE counts
        msg(5, "<w>", sent_date=early),
    ]
    assert references(*messages) == "(4)(5)(1 (3)(2))"


def subject(uid: int, text: str, base: str, *refs: str, **changes: Any) -> SortFields:
    return msg(uid, f"<s{uid}>", *refs, subject=text, base_subject=base, **changes)


def test_reply_goes_under_its_original() -> None:
    messages = [subject(1, "Re: lunch", "lunch"), subject(2, "Lunch", "Lunch")]
    # (5B) the original takes the table from the reply, (5C) the reply goes below it
    assert references(*messages) == "(2 1)"


@pytest.mark.parametrize(
    "texts",
    [
        ("lunch", "LUNCH"),  # two originals
        ("Re: lunch", "Fwd: lunch"),  # two replies
        ("lunch (fwd)", "[fwd: lunch]"),  # forwards marked at the end
    ],
)
def test_equals_become_siblings_under_a_dummy(texts: tuple[str, str]) -> None:
    messages = [subject(1, texts[0], "lunch"), subject(2, texts[1], "lunch")]
    assert references(*messages) == "((1)(2))"


def test_blobs_alone_do_not_make_a_reply() -> None:
    messages = [subject(1, "[list] lunch", "lunch"), subject(2, "[other] lunch", "lunch")]
    assert references(*messages) == "((1)(2))"
    messages = [subject(1, "[list] lunch", "lunch"), subject(2, "[list] Re: lunch", "lunch")]
    assert references(*messages) == "(1 2)"


def test_subject_merge_into_a_dummy() -> None:
    messages = [
        # a dummy root (<gone> has two replies) whose first child says "lunch"
        subject(1, "Re: lunch", "lunch", "<gone>"),
        subject(2, "Re: dinner", "dinner", "<gone>"),
        # (5C) a message with the dummy's subject goes below the dummy
        subject(3, "lunch", "lunch"),
        # (5C) another dummy with that subject gives its children to the first one
        subject(4, "Re: lunch", "lunch", "<gone2>"),
        subject(5, "Re: lunch", "lunch", "<gone2>"),
    ]
    assert references(*messages) == "((1)(2)(3)(4)(5))"


def test_empty_subjects_are_not_gathered() -> None:
    messages = [subject(1, "", ""), subject(2, "Re:", "")]
    assert references(*messages) == "(1)(2)"


def test_orderedsubject() -> None:
    late = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    messages = [
        subject(1, "b", "b", sent_date=late),
        subject(2, "a", "a"),
        subject(3, "Re: B", "B"),
        subject(4, "Re: b", "b"),
        subject(5, "", ""),
        subject(6, "re: a", "a"),
    ]
    # each thread: its first message, the others below it as siblings; threads by date
    assert payload(thread_orderedsubject(messages)) == "(2 6)(3 (4)(1))(5)"
