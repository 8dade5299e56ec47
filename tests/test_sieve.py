"""Sieve scripts: checking (script.py) and running (interpreter.py) on real messages."""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy

import pytest

from postoffice.delivery.model import Envelope, Origin, Recipient
from postoffice.filters.api import Message
from postoffice.filters.sieve import SIEVE_EXTENSIONS, SieveError, check_script
from postoffice.filters.sieve.actions import (
    Discard,
    Fileinto,
    Keep,
    Outcome,
    Redirect,
    Reject,
    Vacation,
)
from postoffice.filters.sieve.comparators import matches
from postoffice.filters.sieve.interpreter import Limits, MessageFacts, SieveRuntimeError, run
from postoffice.filters.sieve.script import compile_script
from postoffice.filters.sieve.stage import decode_header_value

NOW = dt.datetime(2026, 11, 30, 9, 15, 42, tzinfo=dt.UTC)  # a Monday
LIMITS = Limits(
    max_actions=32, max_redirects=4, cpu_seconds=10.0, vacation_min_days=1, vacation_max_days=90
)
REQUIRE_ALL = "require " + "[" + ", ".join(f'"{name}"' for name in SIEVE_EXTENSIONS) + "];\n"

MESSAGE = (
    b"From: Alice Example <alice+lists@remote.test>\r\n"
    b"To: Bob <bob@example.test>, carol@example.test\r\n"
    b"Cc: dave@other.test\r\n"
    b"Subject: =?utf-8?q?Caf=C3=A9?= [team] weekly\r\n"
    b" report\r\n"
    b"Date: Sun, 29 Nov 2026 23:30:00 -0500\r\n"
    b"Message-ID: <m1@remote.test>\r\n"
    b"X-Spam-Score: 7\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b"\r\n'
    b"\r\n"
    b"--b\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"The quarterly numbers are in.\r\n"
    b"--b\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>The <b>quarterly</b> numbers</p>\r\n"
    b"--b--\r\n"
)


def facts() -> MessageFacts:
    """MESSAGE from alice+lists@remote.test to bob+work@example.test, who has an Archive."""
    end = MESSAGE.find(b"\r\n\r\n")
    header = MESSAGE[:end]
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)
    headers = [(name, decode_header_value(value)) for name, value in parsed.items()]
    return MessageFacts(
        headers,
        MESSAGE,
        "alice+lists@remote.test",
        "bob+work@example.test",
        NOW,
        frozenset({"Archive"}),
    )


def run_script(text: str, limits: Limits = LIMITS) -> Outcome:
    return run(compile_script(text), facts(), limits)


# -- checking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ('require "regex";', "unsupported extension 'regex'"),
        ('fileinto "x";', 'fileinto needs require "fileinto"'),
        ('if header :is "a" "b" { keep; }\nrequire "fileinto";', "line 2: require must come"),
        ("keep", "script ends where ; or { was expected"),
        ("if true keep;", "if must be followed by a block"),
        ("else { keep; }", "else must follow if or elsif"),
        ('if header :is :contains "a" "b" { keep; }', ":contains conflicts with :is"),
        ('redirect "nobody";', "invalid address 'nobody'"),
        ('if header :comparator "i;foo" "a" "b" { keep; }', "unknown comparator"),
        (
            'require "comparator-i;ascii-numeric";\n'
            'if header :contains :comparator "i;ascii-numeric" "a" "1" { keep; }',
            "cannot do :contains",
        ),
        ('if header :count "gt" "a" "1" { keep; }', ':count needs require "relational"'),
        ('require "relational"; if header :count "big" "a" "1" { keep; }', "unknown relation"),
        ('if envelope "to" "x" { keep; }', 'envelope needs require "envelope"'),
        ('require "envelope"; if envelope "auth" "x" { keep; }', "unknown envelope part"),
        ('require "envelope"; if envelope :user "to" "x" { keep; }', 'require "subaddress"'),
        ('require "variables"; set "1x" "y";', "invalid variable name"),
        ('require "date"; if currentdate "century" "21" { keep; }', "unknown date part"),
        ('keep :flags "x";', ':flags needs require "imap4flags"'),
        ('require "fileinto"; fileinto :copy "x";', ':copy needs require "copy"'),
        ('require "fileinto"; fileinto :create "x";', ':create needs require "mailbox"'),
        ("discard 1;", "discard takes 0 arguments"),
        ("if size 100 { keep; }", "size needs :over or :under"),
        ('if exists ["a", "b"] "c" { keep; }', "exists takes 1 arguments"),
        ("if not (true, false) { keep; }", "not takes one test"),
        ("frobnicate;", "unknown command 'frobnicate'"),
        ("if keep { stop; }", "keep is not a test"),
        ('require "vacation"; vacation :days "x" "away";', ":days needs a number"),
        ("/* unterminated", "unexpected text"),
        ("if " + "not " * 200 + "true { keep; }", "nested more than 100 deep"),
        ("if true { " * 200 + "}" * 200, "nested more than 100 deep"),
    ],
)
def test_check_script_refuses(script: str, error: str) -> None:
    with pytest.raises(SieveError) as raised:
        check_script(script)
    assert error in str(raised.value)
    assert raised.value.line is not None


def test_check_script_accepts_every_extension() -> None:
    check_script(
        REQUIRE_ALL
        + """# a comment
/* and a
   bracketed one */
if allof (header :matches "subject" "*", not exists "x-nothing") {
    fileinto :copy :create :flags ["\\\\Seen", "$Work"] "Archive";
} elsif anyof (size :over 10K, body :content "text/plain" :contains "x") {
    redirect :copy "carol@example.test";
} else {
    keep :flags "\\\\Flagged";
}
if envelope :detail :comparator "i;octet" "to" "work" { setflag "a"; addflag "b"; removeflag "a"; }
if hasflag :count "ge" :comparator "i;ascii-numeric" "1" { stop; }
if date :originalzone "date" "year" "2026" { discard; }
if currentdate :zone "+0100" :value "ge" "hour" "09" { set :upper "x" "y"; }
if string :is "${x}" "" { ereject "no"; }
if mailboxexists "Archive" { reject text:
multi-line
..dotted
.
; }
vacation :days 3 :subject "Away" :from "bob@example.test" :addresses ["b@example.test"]
    :handle "h" :mime "Content-Type: text/plain\r\n\r\nAway";
"""
    )


# -- actions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "actions", "implicit_keep"),
    [
        ("", [], True),
        ("keep;", [Keep(())], False),
        ("discard;", [Discard()], False),
        ('require "fileinto"; fileinto "Archive";', [Fileinto("Archive", (), False, False)], False),
        (
            'require ["fileinto", "copy", "mailbox"]; fileinto :copy :create "A/B";',
            [Fileinto("A/B", (), True, True)],
            True,
        ),
        ('redirect "carol@example.test";', [Redirect("carol@example.test", False)], False),
        (
            'require "copy"; redirect :copy "carol@example.test";',
            [Redirect("carol@example.test", True)],
            True,
        ),
        ('require "reject"; reject "go away";', [Reject("go away", False)], False),
        ('require "ereject"; ereject "go away";', [Reject("go away", True)], False),
        (
            'require "fileinto"; fileinto "A"; stop; fileinto "B";',
            [Fileinto("A", (), False, False)],
            False,
        ),
        (
            'require ["imap4flags", "fileinto"]; setflag "\\\\Seen $a"; addflag ["$b", "$A"];'
            'removeflag "\\\\seen"; fileinto "X"; keep :flags "$c";',
            [Fileinto("X", ("$a", "$b"), False, False), Keep(("$c",))],
            False,
        ),
    ],
)
def test_actions(script: str, actions: list[object], implicit_keep: bool) -> None:
    outcome = run_script(script)
    assert outcome.actions == actions
    assert outcome.implicit_keep is implicit_keep


def test_implicit_keep_carries_the_internal_flags() -> None:
    outcome = run_script('require "imap4flags"; addflag "\\\\Flagged"; addflag "$x";')
    assert outcome.implicit_keep
    assert outcome.flags == ("\\Flagged", "$x")


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("test", "expected"),
    [
        ("true", True),
        ("false", False),
        ("not false", True),
        ("allof (true, false)", False),
        ("anyof (false, true)", True),
        ('exists ["From", "x-spam-score"]', True),
        ('exists ["From", "X-Absent"]', False),
        ("size :over 100", True),
        ("size :under 1K", True),
        ("size :over 1M", False),
        # header: RFC 2047 decoded and unfolded, case-insensitive by default
        ('header :is "subject" "café [team] weekly report"', True),
        ('header :is :comparator "i;octet" "subject" "café [TEAM] weekly report"', False),
        ('header :contains "Subject" "TEAM"', True),
        ('header :matches "subject" "caf? *weekly*"', True),
        ('header :matches "subject" "*\\\\*"', False),
        ('header :contains "x-spam-score" ["1", "7"]', True),
        ('header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "5"', True),
        ('header :value "lt" :comparator "i;ascii-numeric" "x-spam-score" "10"', True),
        ('header :value "gt" "x-spam-score" "10"', True),  # casemap: "7" > "10" as text
        ('header :count "eq" :comparator "i;ascii-numeric" "received" "0"', True),
        # address
        ('address :is "to" "carol@example.test"', True),
        ('address :domain :is "from" "REMOTE.test"', True),
        ('address :localpart :is "from" "alice+lists"', True),
        ('address :user :is "from" "alice"', True),
        ('address :detail :is "from" "lists"', True),
        ('address :detail :is "to" ""', False),  # no "+": no detail, not an empty one
        ('address :all :contains ["to", "cc"] "other.test"', True),
        ('address :count "eq" :comparator "i;ascii-numeric" ["to", "cc"] "3"', True),
        ('address :domain :matches "to" "*.test"', True),
        # envelope
        ('envelope :is "from" "alice+lists@remote.test"', True),
        ('envelope :detail "to" "work"', True),
        ('envelope :user "to" "bob"', True),
        ('envelope :domain "to" "example.test"', True),
        # body (RFC 5173)
        ('body :contains "quarterly numbers are"', True),
        ('body :text :contains "<b>"', True),  # text/html is text too
        ('body :content "text/plain" :contains "<b>"', False),
        ('body :content "text/html" :contains "<b>"', True),
        ('body :raw :contains "--b--"', True),
        ('body :content "image" :contains "q"', False),
        # date (RFC 5260): the header's own zone, then converted
        ('date :originalzone "date" "date" "2026-11-29"', True),
        ('date :zone "+0000" "date" "date" "2026-11-30"', True),
        ('date :zone "+0000" "date" "time" "04:30:00"', True),
        ('date :originalzone "date" "zone" "-0500"', True),
        ('date :originalzone "date" "weekday" "0"', True),
        ('date :originalzone "date" "julian" "61373"', True),
        ('date :zone "+0000" "no-such-header" "year" "2026"', False),
        ('currentdate :zone "+0000" "iso8601" "2026-11-30T09:15:42+00:00"', True),
        ('currentdate :zone "+0100" "hour" "10"', True),
        ('currentdate :zone "+0000" :value "ge" "date" "2026-11-01"', True),
        ('currentdate :zone "+0000" "weekday" "1"', True),
        # mailbox (RFC 5490)
        ('mailboxexists ["inbox", "Archive"]', True),
        ('mailboxexists ["Archive", "Nope"]', False),
        # string and hasflag
        ('string :is "${undefined}" ""', True),
        ('string :count "eq" :comparator "i;ascii-numeric" ["a", "", "b"] "2"', True),
        ('hasflag :contains "a"', False),
    ],
)
def test_tests(test: str, expected: bool) -> None:
    outcome = run_script(REQUIRE_ALL + f'if {test} {{ fileinto "yes"; }}')
    assert (Fileinto("yes", (), False, False) in outcome.actions) is expected


# -- variables (RFC 5229) ----------------------------------------------------------------------


def test_match_variables_and_set_modifiers() -> None:
    outcome = run_script(
        REQUIRE_ALL
        + """
if header :matches "subject" "*[*] *" { set "list" "${2}"; set "rest" "${3}"; }
if address :matches "from" "*+*@*" { set :upperfirst "who" "${1}"; }
set :length "len" "${list}";
set :quotewildcard "q" "a*b?";
set :lower :upperfirst "mixed" "HELLO";
fileinto "${list}/${who}/${len}/${q}/${mixed}";
if string :matches "${rest}" "weekly *" { fileinto "${0}|${1}"; }
"""
    )
    assert [action.mailbox for action in outcome.actions if isinstance(action, Fileinto)] == [
        "team/Alice/4/a\\*b\\?/Hello",
        "weekly report|report",
    ]


def test_a_failed_match_keeps_the_earlier_match_variables() -> None:
    outcome = run_script(
        REQUIRE_ALL
        + """if header :matches "to" "bob*" { }
if header :matches "subject" "nothing*" { }
fileinto "${1}";"""
    )
    assert outcome.actions == [
        Fileinto(" <bob@example.test>, carol@example.test", (), False, False)
    ]


def test_flags_in_a_named_variable() -> None:
    outcome = run_script(
        REQUIRE_ALL
        + """setflag "f" "$a"; addflag "f" "$b"; removeflag "f" "$a";
if hasflag "f" "$b" { fileinto :flags "${f}" "yes"; }
if hasflag "$b" { fileinto "internal"; }"""
    )
    assert outcome.actions == [Fileinto("yes", ("$b",), False, False)]


# -- matching ----------------------------------------------------------------------------------


def test_matches_takes_each_wildcard_as_short_as_possible() -> None:
    assert matches("[acme-users] [fwd] version 1.0", "[*] *", "i;octet") == [
        "acme-users",
        "[fwd] version 1.0",
    ]
    assert matches("Hello", "h?l*", "i;ascii-casemap") == ["e", "lo"]
    assert matches("Hello", "h?l*", "i;octet") is None
    assert matches("a*b", "a\\*b", "i;octet") == []
    assert matches("axb", "a\\*b", "i;octet") is None
    assert matches("", "*", "i;octet") == [""]


def test_matches_is_not_exponential() -> None:
    # A backtracking regular expression takes hours on this; the bitset matcher does not.
    assert matches("a" * 20000, "*a*a*a*a*a*a*a*a*b", "i;octet") is None
    assert matches("a" * 20000 + "b", "*a*a*a*a*a*a*a*a*b", "i;octet") is not None


# -- vacation and limits -----------------------------------------------------------------------


def test_vacation_arguments_and_clamped_days() -> None:
    limits = Limits(
        max_actions=32, max_redirects=4, cpu_seconds=10.0, vacation_min_days=2, vacation_max_days=30
    )
    [short] = run_script('require "vacation"; vacation :days 1 "away";', limits).actions
    [long] = run_script('require "vacation"; vacation :days 365 "away";', limits).actions
    [default] = run_script('require "vacation"; vacation "away";', limits).actions
    assert isinstance(short, Vacation) and short.days == 2
    assert isinstance(long, Vacation) and long.days == 30
    assert isinstance(default, Vacation) and default.days == 7
    [other] = run_script('require "vacation"; vacation "back soon";', limits).actions
    assert isinstance(other, Vacation) and other.handle != default.handle
    [named] = run_script('require "vacation"; vacation :handle "h" "away";', limits).actions
    assert isinstance(named, Vacation) and named.handle == "h"


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ('require ["reject", "fileinto"]; fileinto "x"; reject "no";', "reject cannot"),
        ('require ["reject", "vacation"]; reject "no"; vacation "away";', "reject cannot"),
        ('require "vacation"; vacation "a"; vacation "b";', "only once"),
        ('redirect "a@x.test"; ' * 5, "more than 4 redirects"),
        ("keep; " * 33, "more than 32 actions"),
        ('require "variables"; redirect "${nothing}";', "invalid address"),
        ('require ["fileinto", "variables"]; fileinto "${nothing}";', "empty mailbox"),
    ],
)
def test_runtime_errors(script: str, error: str) -> None:
    with pytest.raises(SieveRuntimeError, match=error):
        run_script(script)


def test_cpu_limit() -> None:
    limits = Limits(
        max_actions=32, max_redirects=4, cpu_seconds=0.0, vacation_min_days=1, vacation_max_days=90
    )
    with pytest.raises(SieveRuntimeError, match="out of time"):
        run_script("keep;", limits)


def test_header_values_are_read_as_a_script_compares_them() -> None:
    raw = (
        b"Subject: =?utf-8?q?Caf=C3=A9?= menu\r\n"
        b"X-Raw: na\xc3\xafve\r\n"
        b"X-Broken: bad \xff byte\r\n"
        b"X-Folded: one\r\n two\r\n\r\nbody\r\n"
    )
    origin = Origin("smtp", "ESMTP", "client.test", "192.0.2.1", "s1")
    message = Message(Envelope("a@remote.test", (Recipient("b@example.test"),)), raw, origin)
    values = {name: decode_header_value(value) for name, value in message.headers.items()}
    assert values == {
        "Subject": "Café menu",
        "X-Raw": "naïve",  # raw UTF-8 (RFC 6532)
        "X-Broken": "bad \ufffd byte",  # not UTF-8: replaced, not an error
        "X-Folded": "one two",
    }
