"""The IMAP command parser: tables of (wire bytes, command), the errors, limits, and fuzzing.

Wire bytes are fed the way the session does: one line at a time, and after a line that
announces a literal exactly that many bytes.
"""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.imap import commands as c
from postoffice.imap.parser import (
    MAX_DEPTH,
    MAX_LITERALS,
    CommandAssembler,
    LiteralTooLarge,
    LiteralWanted,
    ParseError,
    parse_date_time,
)
from postoffice.store import search as s
from postoffice.store.model import Flag, StoreMode

MAX_LINE = 8192
MAX_LITERAL = 1000
MAX_APPEND = 100_000


def assembler(utf8: bool = False) -> CommandAssembler:
    return CommandAssembler(
        max_line=MAX_LINE, max_literal=MAX_LITERAL, max_append=MAX_APPEND, utf8=utf8
    )


def feed(asm: CommandAssembler, wire: bytes) -> list[LiteralWanted]:
    """Feeds one whole command as the session would; returns the literals it announced."""
    wanted: list[LiteralWanted] = []
    pos = 0
    while True:
        end = wire.index(b"\n", pos) + 1
        want = asm.feed_line(wire[pos:end])
        pos = end
        if want is None:
            assert pos == len(wire), "test wire holds more than one command"
            return wanted
        wanted.append(want)
        asm.feed_literal(wire[pos : pos + want.size])
        pos += want.size


def run(asm: CommandAssembler, wire: bytes) -> c.Command:
    feed(asm, wire)
    return asm.finish()


def parse(wire: bytes, utf8: bool = False) -> c.Command:
    return run(assembler(utf8), wire)


def seqs(*ranges: tuple[int, int]) -> c.SeqSet:
    return c.SeqSet(tuple(ranges))


ONE = seqs((1, 1))
SEEN = s.HasFlag(Flag.SEEN)
UTC1 = dt.timezone(dt.timedelta(hours=1))

# -- every command ------------------------------------------------------------------------------

COMMANDS: list[tuple[bytes, c.Command]] = [
    (b"a CAPABILITY\r\n", c.Capability("a")),
    (b"a capability\n", c.Capability("a")),
    (b"x] NOOP\r\n", c.Noop("x]")),  # "]" is an ASTRING-CHAR, so a tag char
    (b"a LOGOUT\r\n", c.Logout("a")),
    (b"a STARTTLS\r\n", c.StartTls("a")),
    (b"a AUTHENTICATE plain\r\n", c.Authenticate("a", "PLAIN")),
    (b"a AUTHENTICATE PLAIN AGZvbwBiYXI=\r\n", c.Authenticate("a", "PLAIN", b"\0foo\0bar")),
    (b"a AUTHENTICATE PLAIN =\r\n", c.Authenticate("a", "PLAIN", b"")),
    (b"a LOGIN fred secret\r\n", c.Login("a", "fred", "secret")),
    (b'a LOGIN "fr\\"ed" "a\\\\b"\r\n', c.Login("a", 'fr"ed', "a\\b")),
    (b"a LOGIN {4}\r\nfred {7+}\r\np w\r\nrd\r\n", c.Login("a", "fred", "p w\r\nrd")),
    (b"a LOGIN fred {2}\r\n\xc3\xa9\r\n", c.Login("a", "fred", "é")),
    (b"a ENABLE condstore UTF8=ACCEPT\r\n", c.Enable("a", ("CONDSTORE", "UTF8=ACCEPT"))),
    (b"a ID NIL\r\n", c.Id("a", None)),
    (b"a ID ()\r\n", c.Id("a", ())),
    (
        b'a ID ("name" "mutt" "version" NIL "os" {5}\r\nLinux)\r\n',
        c.Id("a", (("name", "mutt"), ("version", None), ("os", "Linux"))),
    ),
    (b"a SELECT INBOX\r\n", c.Select("a", "INBOX")),
    (b"a EXAMINE inbox\r\n", c.Select("a", "inbox", readonly=True)),
    (b"a SELECT Box (CONDSTORE)\r\n", c.Select("a", "Box", condstore=True)),
    (
        b"a SELECT INBOX (QRESYNC (67890007 20050715194045000))\r\n",
        c.Select("a", "INBOX", qresync=c.Qresync(67890007, 20050715194045000)),
    ),
    (
        b"a SELECT INBOX (QRESYNC (5 7 41,43:211))\r\n",
        c.Select("a", "INBOX", qresync=c.Qresync(5, 7, seqs((41, 41), (43, 211)))),
    ),
    (
        # RFC 7162 §3.2.5.2 example, all parts
        b"a SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541 "
        b"(1:15,16:20 41,43:116,118,120:211,214:540)))\r\n",
        c.Select(
            "a",
            "INBOX",
            qresync=c.Qresync(
                67890007,
                90060115194045000,
                seqs((41, 211), (214, 541)),
                (
                    seqs((1, 15), (16, 20)),
                    seqs((41, 41), (43, 116), (118, 118), (120, 211), (214, 540)),
                ),
            ),
        ),
    ),
    (
        b"a SELECT INBOX (CONDSTORE QRESYNC (1 2 (1 5)))\r\n",
        c.Select("a", "INBOX", condstore=True, qresync=c.Qresync(1, 2, None, (ONE, seqs((5, 5))))),
    ),
    (b"a CREATE Sent\r\n", c.Create("a", "Sent")),
    (b"a CREATE Sent (USE (\\Sent \\Archive))\r\n", c.Create("a", "Sent", ("\\Sent", "\\Archive"))),
    (b'a DELETE "a b"\r\n', c.Delete("a", "a b")),
    (b"a RENAME old {3}\r\nnew\r\n", c.Rename("a", "old", "new")),
    (b"a SUBSCRIBE &ZeVnLIqe-\r\n", c.Subscribe("a", "&ZeVnLIqe-")),
    (b"a UNSUBSCRIBE x\r\n", c.Subscribe("a", "x", subscribe=False)),
    (b'a LIST "" *\r\n', c.ListMailboxes("a", "", ("*",))),
    (b"a LIST ~/Mail/ %]\r\n", c.ListMailboxes("a", "~/Mail/", ("%]",))),
    (b'a LIST "" "a b*"\r\n', c.ListMailboxes("a", "", ("a b*",))),
    (
        b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" (INBOX "Sent*" %)\r\n',
        c.ListMailboxes(
            "a",
            "",
            ("INBOX", "Sent*", "%"),
            select_options=frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}),
            extended=True,
        ),
    ),
    (
        b'a LIST () "" % RETURN (CHILDREN SUBSCRIBED special-use STATUS (MESSAGES UNSEEN))\r\n',
        c.ListMailboxes(
            "a",
            "",
            ("%",),
            return_options=frozenset({"CHILDREN", "SUBSCRIBED", "SPECIAL-USE"}),
            return_status=("MESSAGES", "UNSEEN"),
            extended=True,
        ),
    ),
    (b'a LIST "" % RETURN ()\r\n', c.ListMailboxes("a", "", ("%",), extended=True)),
    (b"a LSUB #news. comp.%\r\n", c.ListMailboxes("a", "#news.", ("comp.%",), lsub=True)),
    (b"a NAMESPACE\r\n", c.Namespace("a")),
    (
        b"a STATUS blurdybloop (UIDNEXT messages HIGHESTMODSEQ)\r\n",
        c.Status("a", "blurdybloop", ("UIDNEXT", "MESSAGES", "HIGHESTMODSEQ")),
    ),
    (
        b"a APPEND saved-messages (\\Seen) {5}\r\nhello\r\n",
        c.Append("a", "saved-messages", (c.AppendMessage(("\\Seen",), None, b"hello"),)),
    ),
    (
        b'a APPEND INBOX " 7-Feb-1994 21:52:25 -0800" {0+}\r\n\r\n',
        c.Append(
            "a",
            "INBOX",
            (
                c.AppendMessage(
                    (),
                    dt.datetime(1994, 2, 7, 21, 52, 25, tzinfo=dt.timezone(-dt.timedelta(hours=8))),
                    b"",
                ),
            ),
        ),
    ),
    (
        # MULTIAPPEND (RFC 3502) with a literal mailbox name, flags, dates and literal8
        b'a APPEND {5}\r\nINBOX () {3}\r\nabc (\\Seen $x) "01-Jan-2024 10:00:00 +0100" {2+}\r\n'
        b"de ~{3}\r\n\x00\r\n\r\n",
        c.Append(
            "a",
            "INBOX",
            (
                c.AppendMessage((), None, b"abc"),
                c.AppendMessage(("\\Seen", "$x"), dt.datetime(2024, 1, 1, 10, tzinfo=UTC1), b"de"),
                c.AppendMessage((), None, b"\x00\r\n", binary=True),
            ),
        ),
    ),
    (b"a IDLE\r\n", c.Idle("a")),
    (b"a CHECK\r\n", c.Check("a")),
    (b"a CLOSE\r\n", c.Close("a")),
    (b"a UNSELECT\r\n", c.Unselect("a")),
    (b"a EXPUNGE\r\n", c.Expunge("a")),
    (b"a UID EXPUNGE 3000:3002,*\r\n", c.Expunge("a", seqs((3000, 3002), (0, 0)))),
    (b"a COPY 2:4 MEETING\r\n", c.Copy("a", False, seqs((2, 4)), "MEETING")),
    (b"a uid copy $ Trash\r\n", c.Copy("a", True, c.SeqSet((), saved=True), "Trash")),
    (b"a MOVE 4:2 Archive\r\n", c.Copy("a", False, seqs((4, 2)), "Archive", move=True)),
    (b"a UID MOVE 1 {3}\r\nbox\r\n", c.Copy("a", True, ONE, "box", move=True)),
    (b'a GETQUOTA ""\r\n', c.GetQuota("a", "")),
    (b"a GETQUOTAROOT INBOX\r\n", c.GetQuotaRoot("a", "INBOX")),
    (
        b'a SETQUOTA "" (storage 512 MESSAGE 1000)\r\n',
        c.SetQuota("a", "", (("STORAGE", 512), ("MESSAGE", 1000))),
    ),
    (b"a SETQUOTA root ()\r\n", c.SetQuota("a", "root", ())),
    (b"a COMPRESS deflate\r\n", c.Compress("a", "DEFLATE")),
]


@pytest.mark.parametrize(("wire", "command"), COMMANDS)
def test_commands(wire: bytes, command: c.Command) -> None:
    assert parse(wire) == command


# -- FETCH --------------------------------------------------------------------------------------

FAST = (c.FetchAttr("FLAGS"), c.FetchAttr("INTERNALDATE"), c.FetchAttr("RFC822.SIZE"))
ALL = (*FAST, c.FetchAttr("ENVELOPE"))


FETCHES: list[tuple[bytes, tuple[c.FetchItem, ...]]] = [
    (b"fast", FAST),
    (b"ALL", ALL),
    (b"FULL", (*ALL, c.FetchAttr("BODY"))),
    (b"uid", (c.FetchAttr("UID"),)),
    (
        b"(UID FLAGS MODSEQ RFC822 RFC822.HEADER RFC822.TEXT BODYSTRUCTURE BODY)",
        tuple(
            c.FetchAttr(n)
            for n in [
                "UID",
                "FLAGS",
                "MODSEQ",
                "RFC822",
                "RFC822.HEADER",
                "RFC822.TEXT",
                "BODYSTRUCTURE",
                "BODY",
            ]
        ),
    ),
    (b"BODY[]", (c.FetchSection(c.Section()),)),
    (b"body.peek[]<0.2048>", (c.FetchSection(c.Section(), peek=True, partial=(0, 2048)),)),
    (b"BODY[TEXT]", (c.FetchSection(c.Section(text="TEXT")),)),
    (b"BODY[1.2.3]", (c.FetchSection(c.Section((1, 2, 3))),)),
    (b"BODY[1.2.HEADER]", (c.FetchSection(c.Section((1, 2), "HEADER")),)),
    (b"BODY[2.MIME]", (c.FetchSection(c.Section((2,), "MIME")),)),
    (b"BODY[4.2.text]<5.10>", (c.FetchSection(c.Section((4, 2), "TEXT"), partial=(5, 10)),)),
    (
        b'BODY.PEEK[HEADER.FIELDS (From to "X-Spam" {4}\r\nDate)]',
        (
            c.FetchSection(
                c.Section((), "HEADER.FIELDS", ("FROM", "TO", "X-SPAM", "DATE")), peek=True
            ),
        ),
    ),
    (
        b"(FLAGS BODY[1.HEADER.FIELDS.NOT (Received)])",
        (c.FetchAttr("FLAGS"), c.FetchSection(c.Section((1,), "HEADER.FIELDS.NOT", ("RECEIVED",)))),
    ),
    (b"BINARY[1.2]", (c.FetchSection(c.Section((1, 2)), binary=True),)),
    (
        b"BINARY.PEEK[]<0.10>",
        (c.FetchSection(c.Section(), binary=True, peek=True, partial=(0, 10)),),
    ),
    (b"(binary.size[1] BINARY.SIZE[])", (c.FetchBinarySize((1,)), c.FetchBinarySize(()))),
]


@pytest.mark.parametrize(("items", "expected"), FETCHES)
def test_fetch_items(items: bytes, expected: tuple[c.FetchItem, ...]) -> None:
    assert parse(b"t FETCH 1 " + items + b"\r\n") == c.Fetch("t", False, ONE, expected)


def test_fetch_modifiers() -> None:
    assert parse(b"t UID FETCH 1:* FLAGS (CHANGEDSINCE 12345 VANISHED)\r\n") == c.Fetch(
        "t", True, seqs((1, 0)), (c.FetchAttr("FLAGS"),), changed_since=12345, vanished=True
    )
    assert parse(b"t FETCH 1:* (FLAGS) (changedsince 1)\r\n") == c.Fetch(
        "t", False, seqs((1, 0)), (c.FetchAttr("FLAGS"),), changed_since=1
    )


# -- STORE --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "command"),
    [
        (
            b"a STORE 2:4 +FLAGS (\\Deleted)\r\n",
            c.StoreFlags("a", False, seqs((2, 4)), StoreMode.ADD, False, ("\\Deleted",)),
        ),
        (
            b"a UID STORE 1 -flags.silent \\Seen $Forwarded\r\n",
            c.StoreFlags("a", True, ONE, StoreMode.REMOVE, True, ("\\Seen", "$Forwarded")),
        ),
        (b"a STORE 1 FLAGS ()\r\n", c.StoreFlags("a", False, ONE, StoreMode.REPLACE, False, ())),
        (
            b"a STORE 7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)\r\n",
            c.StoreFlags(
                "a",
                False,
                seqs((7, 7), (5, 5), (9, 9)),
                StoreMode.ADD,
                True,
                ("\\Deleted",),
                320162338,
            ),
        ),
        (
            b"a STORE $ FLAGS \\Recent\r\n",
            c.StoreFlags("a", False, c.SeqSet((), True), StoreMode.REPLACE, False, ("\\Recent",)),
        ),
    ],
)
def test_store(wire: bytes, command: c.Command) -> None:
    assert parse(wire) == command


# -- SEARCH -------------------------------------------------------------------------------------

D = dt.date(1994, 2, 1)

SEARCH_KEYS: list[tuple[bytes, c.SearchKey]] = [
    (b"ALL", s.All()),
    (b"answered", s.HasFlag(Flag.ANSWERED)),
    (b"UNANSWERED", s.HasFlag(Flag.ANSWERED, False)),
    (b"DELETED", s.HasFlag(Flag.DELETED)),
    (b"UNDELETED", s.HasFlag(Flag.DELETED, False)),
    (b"DRAFT", s.HasFlag(Flag.DRAFT)),
    (b"UNDRAFT", s.HasFlag(Flag.DRAFT, False)),
    (b"FLAGGED", s.HasFlag(Flag.FLAGGED)),
    (b"UNFLAGGED", s.HasFlag(Flag.FLAGGED, False)),
    (b"SEEN", SEEN),
    (b"UNSEEN", s.HasFlag(Flag.SEEN, False)),
    (b"RECENT", c.Recent()),
    (b"OLD", c.Recent(False)),
    (b"NEW", c.SAnd((c.Recent(), s.HasFlag(Flag.SEEN, False)))),
    (b"BCC x", s.Header("bcc", "x")),
    (b"CC x", s.Header("cc", "x")),
    (b'FROM "Smith"', s.Header("from", "Smith")),
    (b"TO {3}\r\nb c", s.Header("to", "b c")),
    (b'SUBJECT ""', s.Header("subject", "")),
    (b"HEADER Message-ID <a@b>", s.Header("message-id", "<a@b>")),
    (b"BODY foo", s.Body("foo")),
    (b"TEXT foo", s.Text("foo")),
    (b"KEYWORD $Junk", s.HasKeyword("$Junk")),
    (b"UNKEYWORD $Junk", s.HasKeyword("$Junk", False)),
    (b"BEFORE 1-Feb-1994", s.InternalDate("before", D)),
    (b'ON "01-feb-1994"', s.InternalDate("on", D)),
    (b"SINCE 1-Feb-1994", s.InternalDate("since", D)),
    (b"SENTBEFORE 1-Feb-1994", s.SentDate("before", D)),
    (b"SENTON 1-Feb-1994", s.SentDate("on", D)),
    (b"SENTSINCE 1-Feb-1994", s.SentDate("since", D)),
    (b"LARGER 0", s.Size(True, 0)),
    (b"SMALLER 10000000000", s.Size(False, 10_000_000_000)),  # number64 (RFC 9051)
    (b"MODSEQ 620162338", s.ModSeq(620162338)),
    (b'MODSEQ "/flags/\\\\draft" all 620162338', s.ModSeq(620162338)),
    (b"OLDER 3600", s.Age(True, 3600)),
    (b"YOUNGER 60", s.Age(False, 60)),
    (b"1:3,5", c.InSet(seqs((1, 3), (5, 5)), uid=False)),
    (b"*:4", c.InSet(seqs((0, 4)), uid=False)),
    (b"$", c.InSet(c.SeqSet((), True), uid=False)),
    (b"UID 5:*", c.InSet(seqs((5, 0)), uid=True)),
    (b"UID $", c.InSet(c.SeqSet((), True), uid=True)),
    (b"NOT SEEN", c.SNot(SEEN)),
    (b"OR SEEN DRAFT", c.SOr(SEEN, s.HasFlag(Flag.DRAFT))),
    (
        b"OR OR SEEN DRAFT NOT (FLAGGED 1)",
        c.SOr(
            c.SOr(SEEN, s.HasFlag(Flag.DRAFT)),
            c.SNot(c.SAnd((s.HasFlag(Flag.FLAGGED), c.InSet(ONE, uid=False)))),
        ),
    ),
    (b"((SEEN))", SEEN),
    (b"SEEN (DRAFT (ALL))", c.SAnd((SEEN, c.SAnd((s.HasFlag(Flag.DRAFT), s.All()))))),
]


@pytest.mark.parametrize(("keys", "expected"), SEARCH_KEYS)
def test_search_keys(keys: bytes, expected: c.SearchKey) -> None:
    assert parse(b"t SEARCH " + keys + b"\r\n") == c.Search("t", False, expected)


@pytest.mark.parametrize(
    ("wire", "command"),
    [
        (
            b'a SEARCH CHARSET "US-ASCII" FROM x\r\n',
            c.Search("a", False, s.Header("from", "x"), charset="US-ASCII"),
        ),
        (
            b"a UID SEARCH CHARSET UTF-8 SUBJECT {6}\r\nd\xc3\xa9j\xc3\xa0\r\n",
            c.Search("a", True, s.Header("subject", "déjà"), charset="UTF-8"),
        ),
        (b"a SEARCH RETURN () ALL\r\n", c.Search("a", False, s.All(), returns=())),
        (
            b"a SEARCH RETURN (MIN max COUNT ALL SAVE) CHARSET UTF-8 UNSEEN\r\n",
            c.Search(
                "a",
                False,
                s.HasFlag(Flag.SEEN, False),
                charset="UTF-8",
                returns=("MIN", "MAX", "COUNT", "ALL", "SAVE"),
            ),
        ),
        (
            b"a UID SEARCH RETURN (PARTIAL -1:-100 COUNT) UNDELETED\r\n",
            c.Search(
                "a", True, s.HasFlag(Flag.DELETED, False), returns=("PARTIAL -1:-100", "COUNT")
            ),
        ),
        (
            b"a SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM Smith\r\n",
            c.Search(
                "a",
                False,
                c.SAnd(
                    (
                        s.HasFlag(Flag.FLAGGED),
                        s.InternalDate("since", D),
                        c.SNot(s.Header("from", "Smith")),
                    )
                ),
            ),
        ),
    ],
)
def test_search(wire: bytes, command: c.Command) -> None:
    assert parse(wire) == command


def test_sort_and_thread() -> None:
    assert parse(b"a UID SORT (REVERSE ARRIVAL subject) UTF-8 ALL\r\n") == c.Sort(
        "a",
        True,
        (c.SortCriterion("ARRIVAL", reverse=True), c.SortCriterion("SUBJECT")),
        "UTF-8",
        s.All(),
    )
    assert parse(b"a SORT RETURN (MIN COUNT) (DISPLAYFROM) us-ascii SEEN 1:5\r\n") == c.Sort(
        "a",
        False,
        (c.SortCriterion("DISPLAYFROM"),),
        "US-ASCII",
        c.SAnd((SEEN, c.InSet(seqs((1, 5)), uid=False))),
        returns=("MIN", "COUNT"),
    )
    assert parse(b"a THREAD references UTF-8 SINCE 5-MAR-2000\r\n") == c.Thread(
        "a", False, "REFERENCES", "UTF-8", s.InternalDate("since", dt.date(2000, 3, 5))
    )
    assert parse(b"a UID THREAD ORDEREDSUBJECT US-ASCII ALL\r\n") == c.Thread(
        "a", True, "ORDEREDSUBJECT", "US-ASCII", s.All()
    )


def test_utf8_quoted_strings_need_utf8_accept() -> None:
    wire = 'a SELECT "Entwürfe"\r\n'.encode()
    with pytest.raises(ParseError, match="8-bit"):
        parse(wire)
    assert parse(wire, utf8=True) == c.Select("a", "Entwürfe")
    with pytest.raises(ParseError, match="UTF-8"):
        parse(b'a SELECT "\xff"\r\n', utf8=True)


def test_parse_date_time() -> None:
    assert parse_date_time("17-Jul-1996 02:44:25 -0700") == dt.datetime(
        1996, 7, 17, 2, 44, 25, tzinfo=dt.timezone(-dt.timedelta(hours=7))
    )
    for bad in ("17-Jul-1996 02:44:25", "32-Jul-1996 02:44:25 +0000", "1-Foo-1996 02:44:25 +0000"):
        with pytest.raises(ValueError):  # noqa: PT011 - the contract is exactly ValueError
            parse_date_time(bad)


# -- errors -------------------------------------------------------------------------------------

ERRORS: list[tuple[bytes, str | None, str]] = [
    (b"\r\n", None, "tag"),
    (b"a\r\n", None, "tag"),
    (b"+a NOOP\r\n", None, "tag"),
    (b"a{1} NOOP\r\n", None, "tag"),
    (b"a* NOOP\r\n", None, "tag"),
    (b"a FOO\r\n", "a", "Unknown command"),
    (b"a \r\n", "a", "Expected command"),
    (b"a UID NOOP\r\n", "a", "Unknown UID command"),
    (b"a NOOP x\r\n", "a", "Unexpected extra arguments"),
    (b"a SELECT\r\n", "a", "Missing mailbox name"),
    (b"a SELECT INBOX ()\r\n", "a", "Expected select parameter"),
    (b"a SELECT INBOX (FOO)\r\n", "a", "Unknown select parameter"),
    (b"a SELECT INBOX (QRESYNC (0 1))\r\n", "a", "UIDVALIDITY"),
    (b"a LOGIN fred\r\n", "a", "Missing password"),
    (b'a LOGIN "fred\r\n', "a", "quoted string"),
    (b'a LOGIN "fr\\ed" x\r\n', "a", "quoted string"),
    (b"a LOGIN {3}\r\nf\x00o x\r\n", "a", "NUL"),
    (b"a LOGIN {2}\r\n\xc3( x\r\n", "a", "Invalid UTF-8"),
    (b"a LOGIN ~{3}\r\nfoo x\r\n", "a", "Expected space"),
    (b"a AUTHENTICATE PLAIN AGZv*\r\n", "a", "Unexpected extra arguments"),
    (b"a AUTHENTICATE PLAIN AGZ\r\n", "a", "base64"),
    (b"a FETCH x FLAGS\r\n", "a", "Expected sequence set"),
    (b"a FETCH 0 FLAGS\r\n", "a", "out of range"),
    (b"a FETCH 4294967296 FLAGS\r\n", "a", "out of range"),
    (b"a FETCH 4294967295 FLAGS\r\n", None, ""),  # the largest nz-number is fine
    (b"a FETCH 1,$ FLAGS\r\n", "a", "Expected sequence set"),
    (b"a FETCH 1\r\n", "a", "Missing fetch items"),
    (b"a FETCH 1 ()\r\n", "a", "Expected fetch item"),
    (b"a FETCH 1 (FLAGS ALL)\r\n", "a", "Unknown fetch item"),
    (b"a FETCH 1 BODY[MIME]\r\n", "a", "MIME needs a part number"),
    (b"a FETCH 1 BODY[1.FOO]\r\n", "a", "Unknown section text"),
    (b"a FETCH 1 BODY[HEADER.FIELDS]\r\n", "a", "header list"),
    (b"a FETCH 1 BODY[HEADER.FIELDS ()]\r\n", "a", "header field name"),
    (b"a FETCH 1 BODY.PEEK\r\n", "a", "Unknown fetch item"),
    (b"a FETCH 1 BINARY[TEXT]\r\n", "a", "Expected section part"),
    (b"a FETCH 1 BINARY.SIZE[1]<0.5>\r\n", "a", "fetch modifiers"),
    (b"a FETCH 1 BODY[]<0.0>\r\n", "a", "out of range"),
    (b"a FETCH 1 FLAGS (VANISHED)\r\n", "a", "VANISHED"),
    (b"a UID FETCH 1 FLAGS (VANISHED)\r\n", "a", "VANISHED"),
    (b"a FETCH 1 FLAGS (CHANGEDSINCE 0)\r\n", "a", "out of range"),
    (b"a STORE 1 +FLAGS \\*\r\n", "a", "Expected flag"),
    (b"a STORE 1 FLAG (\\Seen)\r\n", "a", "Expected FLAGS"),
    (b"a STORE 1 FLAGS (\\Seen\r\n", "a", "Missing flag"),
    (b"a STORE 1 (UNCHANGEDSINCE x) FLAGS ()\r\n", "a", "Expected mod-sequence"),
    (b"a SEARCH\r\n", "a", "Missing search key"),
    (b"a SEARCH FOO\r\n", "a", "Unknown search key"),
    (b"a SEARCH ()\r\n", "a", "Expected search key"),
    (b"a SEARCH (SEEN\r\n", "a", "Missing search key"),
    (b"a SEARCH OR SEEN\r\n", "a", "Missing search key"),
    (b"a SEARCH SINCE 31-Feb-2024\r\n", "a", "Expected date"),
    (b"a SEARCH OLDER 0\r\n", "a", "out of range"),
    (b"a SEARCH CHARSET KOI8-R ALL\r\n", "a", "Unsupported charset"),
    (b"a SEARCH CHARSET US-ASCII TEXT {2}\r\n\xc3\xa9\r\n", "a", "Invalid US-ASCII"),
    (b"a SEARCH CHARSET UTF-8 TEXT {2}\r\n\xc3(\r\n", "a", "Invalid UTF-8"),
    (b"a SEARCH RETURN (FOO) ALL\r\n", "a", "Unknown search return option"),
    (b"a SEARCH RETURN (PARTIAL 1:-5) ALL\r\n", "a", "partial range"),
    (b"a SEARCH " + b"NOT " * (MAX_DEPTH + 1) + b"ALL\r\n", "a", "nested too deeply"),
    (b"a SEARCH " + b"(" * (MAX_DEPTH + 1) + b"ALL\r\n", "a", "nested too deeply"),
    (b"a SORT (FOO) UTF-8 ALL\r\n", "a", "Unknown sort key"),
    (b"a SORT (DATE) ALL\r\n", "a", "Unsupported charset"),
    (b"a THREAD X-FOO UTF-8 ALL\r\n", "a", "Unsupported thread algorithm"),
    (b'a LIST "" \r\n', "a", "Expected mailbox pattern"),
    (b'a LIST (FOO) "" *\r\n', "a", "Unknown LIST selection option"),
    (b'a LIST (RECURSIVEMATCH) "" *\r\n', "a", "RECURSIVEMATCH"),
    (b'a LIST "" * RETURN (FOO)\r\n', "a", "Unknown LIST return option"),
    (b'a LIST "" * FOO\r\n', "a", "Expected RETURN"),
    (b"a STATUS INBOX ()\r\n", "a", "Expected status items"),
    (b"a STATUS INBOX (MESSAGES FOO)\r\n", "a", "Expected status items"),
    (b"a CREATE x (USE (Sent))\r\n", "a", "special-use"),
    (b"a CREATE x (FOO)\r\n", "a", "Unknown create parameter"),
    (b"a APPEND INBOX\r\n", "a", "Missing message literal"),
    (b'a APPEND INBOX "hello"\r\n', "a", "Invalid date-time"),
    (b'a APPEND INBOX (\\Seen) "x" {1}\r\nx\r\n', "a", "Invalid date-time"),
    (b"a APPEND INBOX {1}\r\nx x\r\n", "a", "Expected message literal"),
    (b'a ID ("a")\r\n', "a", "ID value"),
    (b"a ID (a b)\r\n", "a", "Expected ID field"),
    (b"a NOOP {3}\r\nabc\r\n", "a", "Unexpected extra arguments"),
    (b"a LOGIN {3}x\r\n", "a", "Expected user name"),
]


@pytest.mark.parametrize(("wire", "tag", "message"), ERRORS)
def test_errors(wire: bytes, tag: str | None, message: str) -> None:
    asm = assembler()
    if not message:  # a boundary that must parse
        run(asm, wire)
        return
    with pytest.raises(ParseError, match=message) as info:
        run(asm, wire)
    assert info.value.tag == tag
    assert info.value.message == str(info.value)
    # The assembler is usable again afterwards.
    assert parse(b"b NOOP\r\n") == c.Noop("b")
    feed(asm, b"b NOOP\r\n")
    assert asm.finish() == c.Noop("b")


def test_bad_charset_carries_the_code() -> None:
    with pytest.raises(ParseError) as info:
        parse(b"a SEARCH CHARSET ISO-8859-1 ALL\r\n")
    assert info.value.code == "BADCHARSET"
    assert info.value.tag == "a"


# -- the assembler ------------------------------------------------------------------------------


def test_literals_of_every_kind_are_announced() -> None:
    asm = assembler()
    tags = [asm.tag]
    assert asm.feed_line(b"A1 LOGIN {4}\r\n") == LiteralWanted(4, True, False)
    tags.append(asm.tag)
    asm.feed_literal(b"fred")
    assert asm.feed_line(b" {3+}\r\n") == LiteralWanted(3, False, False)
    asm.feed_literal(b"pwd")
    assert asm.feed_line(b"\r\n") is None
    assert asm.finish() == c.Login("A1", "fred", "pwd")
    tags.append(asm.tag)
    assert tags == [None, "A1", None]
    assert asm.feed_line(b"A2 APPEND INBOX ~{2}\r\n") == LiteralWanted(2, True, True)
    asm.feed_literal(b"\0\0")
    assert asm.feed_line(b" ~{3+}\r\n") == LiteralWanted(3, False, True)


def test_literal_too_large_before_any_data() -> None:
    asm = assembler()
    with pytest.raises(LiteralTooLarge) as info:
        asm.feed_line(b"a LOGIN {%d}\r\n" % (MAX_LITERAL + 1))
    assert (info.value.tag, info.value.size, info.value.synchronizing) == (
        "a",
        MAX_LITERAL + 1,
        True,
    )
    assert info.value.code == "TOOBIG"
    assert asm.tag is None  # reset: the next line starts a new command
    # APPEND messages get the larger limit, the mailbox name literal does not.
    assert asm.feed_line(b"b APPEND x {%d}\r\n" % MAX_APPEND) == LiteralWanted(
        MAX_APPEND, True, False
    )
    asm.reset()
    with pytest.raises(LiteralTooLarge) as info:
        asm.feed_line(b"c APPEND x (\\Seen) {%d+}\r\n" % (MAX_APPEND + 1))
    assert (info.value.tag, info.value.synchronizing) == ("c", False)
    with pytest.raises(LiteralTooLarge):
        asm.feed_line(b"d APPEND {%d}\r\n" % (MAX_LITERAL + 1))
    # A MULTIAPPEND's later messages are still messages.
    assert asm.feed_line(b"e APPEND {1}\r\n") == LiteralWanted(1, True, False)
    asm.feed_literal(b"x")
    assert asm.feed_line(b" {%d}\r\n" % MAX_APPEND) == LiteralWanted(MAX_APPEND, True, False)


def test_line_length_limit() -> None:
    asm = CommandAssembler(max_line=20, max_literal=10, max_append=10)
    asm.feed_line(b"a NOOP " + b"x" * 11 + b"\r\n")  # 20 octets: at the limit
    asm.reset()
    with pytest.raises(ParseError, match="too long") as info:
        asm.feed_line(b"a NOOP " + b"x" * 12 + b"\r\n")
    assert info.value.tag == "a"
    with pytest.raises(ParseError, match="too long") as info:
        asm.feed_line(b"(" * 30 + b"\r\n")
    assert info.value.tag is None


def test_literal_count_limit() -> None:
    asm = assembler()
    asm.feed_line(b"a SEARCH TEXT {1}\r\n")
    for _ in range(MAX_LITERALS - 1):
        asm.feed_literal(b"x")
        assert asm.feed_line(b" TEXT {1}\r\n") is not None
    asm.feed_literal(b"x")
    with pytest.raises(ParseError, match="Too many literals"):
        asm.feed_line(b" TEXT {1}\r\n")


def test_misuse_is_a_parse_error() -> None:
    asm = assembler()
    with pytest.raises(ParseError, match="Incomplete"):
        asm.finish()
    with pytest.raises(ParseError, match="Unexpected literal"):
        asm.feed_literal(b"x")
    asm.feed_line(b"a LOGIN {3}\r\n")
    with pytest.raises(ParseError, match="size mismatch") as info:
        asm.feed_literal(b"ab")
    assert info.value.tag == "a"
    asm.feed_line(b"a LOGIN {3}\r\n")
    with pytest.raises(ParseError, match="Expected literal data"):
        asm.feed_line(b"x\r\n")
    asm.feed_line(b"a NOOP\r\n")
    with pytest.raises(ParseError, match="already complete"):
        asm.feed_line(b"b NOOP\r\n")


# -- hypothesis ---------------------------------------------------------------------------------

_PIECES = [
    b"a", b"A1", b" ", b"  ", b"(", b")", b"[", b"]", b"<", b">", b".", b":", b",", b"*", b"$",
    b"%", b'"', b"\\", b"{3}", b"{0}", b"{2+}", b"~{1}", b"{9999999999}", b"0", b"1", b"4294967296",
    b"UID", b"FETCH", b"STORE", b"SEARCH", b"SORT", b"THREAD", b"APPEND", b"LIST", b"SELECT",
    b"LOGIN", b"ID", b"AUTHENTICATE", b"BODY", b"BODY.PEEK", b"BINARY", b"HEADER.FIELDS", b"MIME",
    b"TEXT", b"1.2", b"OR", b"NOT", b"RETURN", b"CHARSET", b"UTF-8", b"FLAGS", b"+FLAGS", b"\\Seen",
    b"NIL", b"QRESYNC", b"CHANGEDSINCE", b"VANISHED", b"SINCE", b"1-Feb-1994", b"\xc3\xa9", b"\xff",
    b"\x00", b"\r", b"=",
]  # fmt: skip

_LINES = st.one_of(
    st.binary(max_size=60),
    st.lists(st.sampled_from(_PIECES), max_size=30).map(b"".join),
)


@settings(deadline=200, max_examples=400)
@given(st.lists(st.tuples(_LINES, st.booleans(), st.binary(max_size=8)), min_size=1, max_size=6))
def test_fuzz_only_parse_errors(steps: list[tuple[bytes, bool, bytes]]) -> None:
    """Lines and literals of any shape, honoured or not, end in a command or a ParseError."""
    asm = CommandAssembler(max_line=200, max_literal=50, max_append=100, utf8=bool(len(steps) % 2))
    for line, obey, junk in steps:
        with contextlib.suppress(ParseError):
            want = asm.feed_line(line + b"\r\n")
            if want is None:
                asm.finish()
            elif obey:
                asm.feed_literal(junk.ljust(want.size, b"x")[: want.size])
            else:
                asm.feed_literal(junk)


# Round trip: a random search key tree rendered to IMAP syntax parses back to itself.

_MONTH_NAMES = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_ATOMS = st.from_regex(r"[A-Za-z$][A-Za-z0-9$_.-]{0,10}", fullmatch=True)
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
_DATES = st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31))
_SEQ_NUM = st.integers(0, 2**32 - 1)  # 0 is STAR
_SEQSETS = st.one_of(
    st.just(c.SeqSet((), saved=True)),
    st.lists(st.tuples(_SEQ_NUM, _SEQ_NUM), min_size=1, max_size=4).map(
        lambda r: c.SeqSet(tuple(r))
    ),
)
_LEAVES: st.SearchStrategy[c.SearchKey] = st.one_of(
    st.just(s.All()),
    st.builds(s.HasFlag, st.sampled_from(list(Flag)), st.booleans()),
    st.builds(s.HasKeyword, _ATOMS, st.booleans()),
    st.builds(
        s.Header,
        st.one_of(st.sampled_from(["bcc", "cc", "from", "subject", "to"]), _ATOMS.map(str.lower)),
        _TEXT,
    ),
    st.builds(s.Body, _TEXT),
    st.builds(s.Text, _TEXT),
    st.builds(s.InternalDate, st.sampled_from(["before", "on", "since"]), _DATES),
    st.builds(s.SentDate, st.sampled_from(["before", "on", "since"]), _DATES),
    st.builds(s.Size, st.booleans(), st.integers(0, 2**63 - 1)),
    st.builds(s.ModSeq, st.integers(0, 2**63 - 1)),
    st.builds(s.Age, st.booleans(), st.integers(1, 2**32 - 1)),
    st.builds(c.InSet, _SEQSETS, st.booleans()),
    st.builds(c.Recent, st.booleans()),
)
_KEYS: st.SearchStrategy[c.SearchKey] = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.builds(c.SNot, inner),
        st.builds(c.SOr, inner, inner),
        st.lists(inner, min_size=2, max_size=4).map(lambda keys: c.SAnd(tuple(keys))),
    ),
    max_leaves=20,
)


def render_string(value: str, quote: bool) -> str:
    if quote and value.isascii() and "\r" not in value and "\n" not in value:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{{{len(value.encode())}}}\r\n{value}"


def render_set(seq: c.SeqSet) -> str:
    if seq.saved:
        return "$"

    def num(n: int) -> str:
        return "*" if n == c.STAR else str(n)

    return ",".join(num(a) if a == b else f"{num(a)}:{num(b)}" for a, b in seq.ranges)


def render(key: c.SearchKey, quote: bool) -> str:
    """IMAP syntax for `key`, the way a client would write it."""
    flag_names = {Flag.ANSWERED: "ANSWERED", Flag.DELETED: "DELETED", Flag.DRAFT: "DRAFT"}
    flag_names |= {Flag.FLAGGED: "FLAGGED", Flag.SEEN: "SEEN"}
    match key:
        case s.All():
            return "ALL"
        case s.HasFlag(flag, present):
            return ("" if present else "UN") + flag_names[flag]
        case s.HasKeyword(word, present):
            return ("KEYWORD " if present else "UNKEYWORD ") + word
        case s.Header(name, value):
            return f"HEADER {name} {render_string(value, quote)}"
        case s.Body(value):
            return "BODY " + render_string(value, quote)
        case s.Text(value):
            return "TEXT " + render_string(value, quote)
        case s.InternalDate(op, day) | s.SentDate(op, day):
            prefix = "SENT" if isinstance(key, s.SentDate) else ""
            date = f"{day.day}-{_MONTH_NAMES[day.month - 1]}-{day.year:04d}"
            return f"{prefix}{op.upper()} {date}"
        case s.Size(larger, octets):
            return ("LARGER " if larger else "SMALLER ") + str(octets)
        case s.ModSeq(at_least):
            return f"MODSEQ {at_least}"
        case s.Age(older, seconds):
            return ("OLDER " if older else "YOUNGER ") + str(seconds)
        case c.InSet(seq, uid):
            return ("UID " if uid else "") + render_set(seq)
        case c.Recent(present):
            return "RECENT" if present else "OLD"
        case c.SNot(inner):
            return "NOT " + render(inner, quote)
        case c.SOr(left, right):
            return f"OR {render(left, quote)} {render(right, quote)}"
        case c.SAnd(keys):
            return "(" + " ".join(render(k, quote) for k in keys) + ")"
    raise AssertionError(key)


@settings(deadline=None)
@given(_KEYS, st.booleans(), st.booleans())
def test_search_round_trip(key: c.SearchKey, uid: bool, quote: bool) -> None:
    text = render(key, quote)
    if isinstance(key, c.SAnd):
        text = text[1:-1]  # top-level keys are AND-ed without parentheses
    wire = f"t {'UID ' if uid else ''}SEARCH CHARSET UTF-8 {text}\r\n".encode()
    assert parse(wire) == c.Search("t", uid, key, charset="UTF-8")


@settings(deadline=None)
@given(_SEQSETS, st.lists(st.sampled_from(FETCHES), min_size=1, max_size=4))
def test_fetch_round_trip(
    seq: c.SeqSet, items: list[tuple[bytes, tuple[c.FetchItem, ...]]]
) -> None:
    wire = b"t FETCH " + render_set(seq).encode() + b" "
    singles = [(w, e) for w, e in items if w.upper() not in (b"ALL", b"FAST", b"FULL")]
    if not singles:
        return
    wire += b"(" + b" ".join(w.strip(b"()") for w, _ in singles) + b")\r\n"
    expected = tuple(item for _, e in singles for item in e)
    assert parse(wire) == c.Fetch("t", False, seq, expected)
