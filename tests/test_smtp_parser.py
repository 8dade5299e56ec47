"""The pure SMTP layers: command lines → typed arguments, reply constants, and fuzzing of the
parser and the DATA reader (DESIGN §8: no input crashes them)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.delivery.model import Outcome, Verdict
from postoffice.smtp import replies
from postoffice.smtp.data import ChunkCollector, DataReader
from postoffice.smtp.parser import (
    AUTH_LINE_MAX,
    COMMAND_LINE_MAX,
    NULL_PATH,
    AuthArgs,
    BdatArgs,
    Command,
    DataArgs,
    HeloArgs,
    HelpArgs,
    MailArgs,
    NoopArgs,
    QuitArgs,
    RcptArgs,
    RsetArgs,
    SmtpPath,
    StarttlsArgs,
    VrfyArgs,
    decode_xtext,
    line_limit,
    parse_command,
    verb_of,
)
from postoffice.smtp.replies import BadSyntax, Reply, SmtpError, UserError

BOB = SmtpPath("bob@example.test")

GOOD: list[tuple[bytes, Command]] = [
    (b"EHLO client.example", HeloArgs("EHLO", "client.example")),
    (b"helo client.example", HeloArgs("HELO", "client.example")),
    (b"LHLO mta.local", HeloArgs("LHLO", "mta.local")),
    (b"EHLO [192.0.2.1]", HeloArgs("EHLO", "[192.0.2.1]")),
    (b"EHLO client.example extra words", HeloArgs("EHLO", "client.example")),
    (b"MAIL FROM:<>", MailArgs(NULL_PATH)),
    (b"MAIL FROM:<bob@Example.TEST>", MailArgs(BOB)),
    (b"mail from:<bob@example.test>", MailArgs(BOB)),
    (b"MAIL FROM: <bob@example.test>", MailArgs(BOB)),
    (b"MAIL FROM:<Bob@example.test>", MailArgs(SmtpPath("Bob@example.test"))),
    (
        b"MAIL FROM:<bob@example.test> SIZE=1000 BODY=8BITMIME",
        MailArgs(BOB, size=1000, body="8BITMIME", has_parameters=True),
    ),
    (
        b"MAIL FROM:<bob@example.test> body=binarymime SMTPUTF8 RET=hdrs ENVID=QQ+2B1 AUTH=<>",
        MailArgs(
            BOB,
            body="BINARYMIME",
            smtputf8=True,
            ret="HDRS",
            envid="QQ+1",
            auth="<>",
            has_parameters=True,
        ),
    ),
    (
        b"MAIL FROM:<bob@example.test> BODY=7BIT RET=FULL AUTH=bob+40example.test",
        MailArgs(BOB, body="7BIT", ret="FULL", auth="bob@example.test", has_parameters=True),
    ),
    (b'MAIL FROM:<"john doe"@example.test>', MailArgs(SmtpPath('"john doe"@example.test'))),
    (b"RCPT TO:<bob@example.test>", RcptArgs(BOB)),
    (b"rcpt to: <bob@EXAMPLE.test>", RcptArgs(BOB)),
    (b'RCPT TO:<"a@b"@example.test>', RcptArgs(SmtpPath('"a@b"@example.test'))),
    (b'RCPT TO:<"a\\"b"@example.test>', RcptArgs(SmtpPath('"a\\"b"@example.test'))),
    (b"RCPT TO:<user%other.test@example.test>", RcptArgs(SmtpPath("user%other.test@example.test"))),
    (b"RCPT TO:<other!user@example.test>", RcptArgs(SmtpPath("other!user@example.test"))),
    (
        b"RCPT TO:<@Relay.test,@r2.test:user@example.test>",
        RcptArgs(
            SmtpPath("@relay.test,@r2.test:user@example.test", route=("relay.test", "r2.test"))
        ),
    ),
    (b"RCPT TO:<user@[192.0.2.1]>", RcptArgs(SmtpPath("user@[192.0.2.1]"))),
    (b"RCPT TO:<user@[IPv6:2001:db8::1]>", RcptArgs(SmtpPath("user@[ipv6:2001:db8::1]"))),
    (b"RCPT TO:<user@example.test.>", RcptArgs(SmtpPath("user@example.test."))),
    (b"RCPT TO:<Postmaster>", RcptArgs(SmtpPath("Postmaster"))),
    (b"RCPT TO:<postmaster>", RcptArgs(SmtpPath("Postmaster"))),
    (b"RCPT TO:<postmaster@example.test>", RcptArgs(SmtpPath("postmaster@example.test"))),
    (
        "RCPT TO:<用户@例子.测试>".encode(),
        RcptArgs(SmtpPath("用户@例子.测试", utf8=True)),
    ),
    (
        "RCPT TO:<josé@example.test>".encode(),
        RcptArgs(SmtpPath("josé@example.test", utf8=True)),
    ),
    (
        b"RCPT TO:<bob@example.test> NOTIFY=SUCCESS,failure ORCPT=rfc822;bob+40example.test",
        RcptArgs(
            BOB,
            notify=("SUCCESS", "FAILURE"),
            orcpt="rfc822;bob@example.test",
            has_parameters=True,
        ),
    ),
    (b"RCPT TO:<bob@example.test> NOTIFY=never", RcptArgs(BOB, ("NEVER",), has_parameters=True)),
    (b"DATA", DataArgs()),
    (b"data", DataArgs()),
    (b"BDAT 100", BdatArgs(100, False)),
    (b"BDAT 0 LAST", BdatArgs(0, True)),
    (b"bdat 5 last", BdatArgs(5, True)),
    (b"RSET", RsetArgs()),
    (b"NOOP", NoopArgs()),
    (b"NOOP anything at all", NoopArgs()),
    (b"QUIT", QuitArgs()),
    (b"VRFY bob", VrfyArgs("bob")),
    (b"HELP", HelpArgs("")),
    (b"HELP MAIL", HelpArgs("MAIL")),
    (b"STARTTLS", StarttlsArgs()),
    (b"AUTH PLAIN", AuthArgs("PLAIN", None)),
    (b"AUTH plain AGJvYgBzZWNyZXQ=", AuthArgs("PLAIN", b"AGJvYgBzZWNyZXQ=")),
    (b"AUTH LOGIN =", AuthArgs("LOGIN", b"=")),
    (b"AUTH SCRAM-SHA-256", AuthArgs("SCRAM-SHA-256", None)),
]


@pytest.mark.parametrize(("wire", "expected"), GOOD, ids=[repr(w)[2:-1] for w, _ in GOOD])
def test_parses(wire: bytes, expected: Command) -> None:
    assert parse_command(wire) == expected


LONG_PATH = b"RCPT TO:<" + b"a" * 250 + b"@example.test>"

BAD: list[tuple[bytes, int, str]] = [
    (b"", 500, "5.5.1"),
    (b"FOO bar", 500, "5.5.1"),
    (b"MAILFROM:<a@b.test>", 500, "5.5.1"),
    (b"EXPN staff", 502, "5.5.1"),
    (b"TURN", 502, "5.5.1"),
    (b"EHLO", 501, "5.5.4"),
    (b"EHLO \x01bad", 501, "5.5.4"),
    (b"MAIL", 501, "5.1.7"),
    (b"MAIL TO:<a@b.test>", 501, "5.1.7"),
    (b"MAIL FROM:a@b.test", 501, "5.1.7"),
    (b"MAIL FROM:<a@b.test", 501, "5.1.7"),
    (b"MAIL FROM:<a@b.test>>", 501, "5.5.4"),
    (b"MAIL FROM:<a@@b.test>", 501, "5.1.7"),
    (b"MAIL FROM:<.a@b.test>", 501, "5.1.7"),
    (b"MAIL FROM:<a.@b.test>", 501, "5.1.7"),
    (b"MAIL FROM:<a..b@b.test>", 501, "5.1.7"),
    (b"MAIL FROM:<a@-b.test>", 501, "5.1.7"),
    (b"MAIL FROM:<a@b-.test>", 501, "5.1.7"),
    (b"MAIL FROM:<a@b..test>", 501, "5.1.7"),
    (b"MAIL FROM:<a@>", 501, "5.1.7"),
    (b"MAIL FROM:<@b.test>", 501, "5.1.7"),
    (b"MAIL FROM:<a b@c.test>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[300.1.1.1]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[IPv6:zz]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[nonsense]>", 501, "5.1.7"),
    (b"MAIL FROM:<a@[192.0.2.1>", 501, "5.1.7"),
    (b'MAIL FROM:<"unterminated@b.test>', 501, "5.1.7"),
    (b"MAIL FROM:<a\x00@b.test>", 501, "5.1.7"),
    (b"MAIL FROM:<\xff@b.test>", 500, "5.5.2"),
    (b"MAIL FROM:<@a.test:>", 501, "5.1.7"),
    (b"MAIL FROM:<@[192.0.2.1]:a@b.test>", 501, "5.1.7"),
    (b"RCPT TO:<>", 501, "5.1.3"),
    (b"RCPT TO:bob@example.test", 501, "5.1.3"),
    (b"RCPT TO:<Postmaster> NOTIFY", 501, "5.5.4"),
    (b"RCPT TO:<nobody>", 501, "5.1.3"),
    (LONG_PATH, 501, "5.1.3"),
    (b"RCPT TO:<a@b.test> FOO=1", 555, "5.5.4"),
    (b"MAIL FROM:<a@b.test> NOTIFY=NEVER", 555, "5.5.4"),
    (b"RCPT TO:<a@b.test> SIZE=10", 555, "5.5.4"),
    (b"MAIL FROM:<a@b.test> SIZE=abc", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> SIZE=", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> SIZE", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> SIZE=123456789012345678901", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> SIZE=1 SIZE=2", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test>SIZE=1", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> =1", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> -X=1", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> X_Y=1", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> BODY=9BIT", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> SMTPUTF8=yes", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> RET=ALL", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> ENVID=a+zz", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> ENVID=a+4", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> ENVID=" + b"x" * 101, 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> ENVID=+FF", 501, "5.5.4"),
    (b"MAIL FROM:<a@b.test> AUTH", 501, "5.5.4"),
    (b"RCPT TO:<a@b.test> NOTIFY=NEVER,SUCCESS", 501, "5.5.4"),
    (b"RCPT TO:<a@b.test> NOTIFY=SUCCESS,SUCCESS", 501, "5.5.4"),
    (b"RCPT TO:<a@b.test> NOTIFY=SOMETIMES", 501, "5.5.4"),
    (b"RCPT TO:<a@b.test> NOTIFY=", 501, "5.5.4"),
    (b"RCPT TO:<a@b.test> ORCPT=rfc822", 501, "5.5.4"),
    (b"RCPT TO:<a@b.test> ORCPT=;a@b.test", 501, "5.5.4"),
    (b"RCPT TO:<a@b.test> ORCPT=rfc822;", 501, "5.5.4"),
    (b"RCPT TO:<a@b.test> ORCPT=rfc 822;a", 501, "5.5.4"),
    (b"DATA now", 501, "5.5.4"),
    (b"RSET x", 501, "5.5.4"),
    (b"QUIT now", 501, "5.5.4"),
    (b"STARTTLS please", 501, "5.5.4"),
    (b"BDAT", 501, "5.5.4"),
    (b"BDAT x", 501, "5.5.4"),
    (b"BDAT -1", 501, "5.5.4"),
    (b"BDAT 10 FIRST", 501, "5.5.4"),
    (b"BDAT 10 LAST x", 501, "5.5.4"),
    (b"BDAT 123456789012345678901", 501, "5.5.4"),
    (b"AUTH", 501, "5.5.4"),
    (b"AUTH PLAIN a b", 501, "5.5.4"),
    (b"AUTH PL@IN", 501, "5.5.4"),
    (b"AUTH " + b"X" * 21, 501, "5.5.4"),
    (b"VRFY", 501, "5.5.4"),
    (b"VRFY   ", 501, "5.5.4"),
]


@pytest.mark.parametrize(("wire", "code", "status"), BAD, ids=[repr(w)[2:42] for w, _, _ in BAD])
def test_refuses(wire: bytes, code: int, status: str) -> None:
    with pytest.raises(SmtpError) as caught:
        parse_command(wire)
    assert (caught.value.reply.code, caught.value.reply.status) == (code, status)
    assert caught.value.reply.text


def test_syntax_errors_are_bad_syntax_and_unoffered_verbs_user_errors() -> None:
    with pytest.raises(BadSyntax):
        parse_command(b"MAIL FROM:<")
    with pytest.raises(UserError):
        parse_command(b"EXPN x")
    with pytest.raises(UserError):
        parse_command(b"MAIL FROM:<a@b.test> XFOO")


def test_path_of_256_octets_is_the_limit() -> None:
    local = b"a" * (254 - len(b"@example.test"))
    assert parse_command(b"RCPT TO:<" + local + b"@example.test>")
    with pytest.raises(BadSyntax):
        parse_command(b"RCPT TO:<a" + local + b"@example.test>")


def test_line_limits() -> None:
    assert line_limit(b"NOOP") == COMMAND_LINE_MAX == 512
    assert line_limit(b"MAIL") > 1000
    assert line_limit(b"RCPT") > 1000
    assert line_limit(b"AUTH") == AUTH_LINE_MAX == 12288
    assert line_limit(b"NOOP", 2048) == 2048
    assert line_limit(b"AUTH", 20000) == 20000


def test_verb_of() -> None:
    assert verb_of(b"mail FROM:<a@b>") == b"MAIL"
    assert verb_of(b"") == b""
    assert verb_of(b"x" * 100) == b"X" * 8


@pytest.mark.parametrize(
    ("xtext", "text"),
    [("", ""), ("abc", "abc"), ("a+2Bb", "a+b"), ("+3D", "="), ("+c3+a9", "é"), ("~!", "~!")],
)
def test_decode_xtext(xtext: str, text: str) -> None:
    assert decode_xtext(xtext) == text


@pytest.mark.parametrize("xtext", ["a=b", "a b", "+", "+4", "+GG", "é", "+FF"])
def test_decode_xtext_refuses(xtext: str) -> None:
    with pytest.raises(BadSyntax):
        decode_xtext(xtext)


# -- replies --------------------------------------------------------------------------------

CONSTANTS = {name: value for name, value in vars(replies).items() if name.startswith("SMTP_")}


def test_there_are_reply_constants() -> None:
    assert len(CONSTANTS) > 50
    assert all(isinstance(value, Reply) for value in CONSTANTS.values())


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_reply_name_matches_its_code(name: str) -> None:
    reply = CONSTANTS[name]
    match = re.fullmatch(r"SMTP_(\d{3})_[A-Z0-9_]+", name)
    assert match, name
    assert int(match[1]) == reply.code
    # RFC 2034 §3: 2xx, 4xx and 5xx replies carry an enhanced code of the same class.
    if reply.code // 100 in (2, 4, 5):
        assert reply.status is not None, name
        assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", reply.status), name
        assert reply.status[0] == str(reply.code)[0], name
    else:
        assert reply.status is None, name
    assert reply.text and "\r" not in reply.text and "\n" not in reply.text


def test_reply_wire_forms() -> None:
    assert replies.SMTP_550_NO_SUCH_USER.wire() == b"550 5.1.1 No such user here\r\n"
    assert replies.SMTP_354_START_INPUT.wire() == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    ehlo = Reply(250, None, "mx Hello c", ("PIPELINING", "SIZE 10"))
    assert ehlo.wire() == b"250-mx Hello c\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
    multi = Reply(214, "2.0.0", "one", ("two",))
    assert multi.wire() == b"214-2.0.0 one\r\n214 2.0.0 two\r\n"


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_outcome_has_a_reply_at_every_stage(outcome: Outcome) -> None:
    for mapping in (replies.for_mail, replies.for_rcpt, replies.for_data):
        reply = mapping(Verdict(outcome))
        assert reply.positive == (outcome is Outcome.ACCEPTED)


def test_outcome_replies() -> None:
    assert replies.for_rcpt(Verdict(Outcome.UNKNOWN_USER)).wire().startswith(b"550 5.1.1")
    assert replies.for_rcpt(Verdict(Outcome.RELAY_DENIED)).wire().startswith(b"550 5.7.1")
    assert replies.for_rcpt(Verdict(Outcome.QUOTA_FULL)).wire().startswith(b"452 4.2.2")
    assert replies.for_data(Verdict(Outcome.QUOTA_EXCEEDED)).wire().startswith(b"552 5.2.2")
    assert replies.for_mail(Verdict(Outcome.SENDER_NOT_OWNED)).wire().startswith(b"553 5.7.1")
    assert replies.for_mail(Verdict(Outcome.TEMPORARY_FAILURE)).wire().startswith(b"451 4.3.0")


def test_verdict_detail_replaces_the_text_on_one_line() -> None:
    reply = replies.for_rcpt(Verdict(Outcome.UNKNOWN_USER, "no such\r\nuser"))
    assert reply.wire() == b"550 5.1.1 no such user\r\n"


# -- fuzzing ----------------------------------------------------------------------------------

VERBS = [b"EHLO ", b"MAIL FROM:", b"RCPT TO:", b"BDAT ", b"AUTH ", b"VRFY ", b"DATA"]
PATHISH = st.text(alphabet='<>@"\\:,.[]%!+=; abcXYZ09é\x00\x7f', max_size=60)


def parse_or_refuse(line: bytes) -> Command | Reply:
    """The parsed command, or the reply of the typed error it raised (anything else fails)."""
    try:
        return parse_command(line)
    except SmtpError as e:
        return e.reply


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_parser_never_crashes_on_bytes(line: bytes) -> None:
    result = parse_or_refuse(line)
    assert not isinstance(result, Reply) or result.code >= 500


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(VERBS), PATHISH, PATHISH)
def test_parser_never_crashes_on_near_misses(verb: bytes, path: str, params: str) -> None:
    command = parse_or_refuse(verb + path.encode() + b" " + params.encode())
    if isinstance(command, Reply):
        assert command.code >= 500
    elif isinstance(command, MailArgs | RcptArgs):
        # Whatever was accepted is an address delivery can take apart.
        assert "<" not in command.path.address and ">" not in command.path.address


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_data_reader_never_crashes(chunks: list[bytes]) -> None:
    reader = DataReader(200, long_lines_ok=False)
    for chunk in chunks:
        done = reader.feed(chunk)
        if done is not None:
            received, _ = done
            assert received.refusal is not None or len(received.message) <= 200
            return


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20), st.booleans())
def test_chunk_collector_never_crashes(chunks: list[bytes], binary: bool) -> None:
    collector = ChunkCollector(300, long_lines_ok=False, binary=binary)
    for chunk in chunks:
        collector.add(chunk)
    received = collector.finish()
    assert received.refusal is not None or received.message == b"".join(chunks)
