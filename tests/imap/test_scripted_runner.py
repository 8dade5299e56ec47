"""The scripted-test runner itself: the parser, the matcher, and whole runs against a fake
server on loopback whose replies are written out here, including ones that must fail."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .scripted import (
    Account,
    Atom,
    Nil,
    Parens,
    ScriptError,
    String,
    Target,
    Variables,
    match_args,
    parse_args,
    read_script,
    run_script,
)

# -- tokenizer -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "args"),
    [
        ("a b", (Atom("a"), Atom("b"))),
        ('"x \\"y\\"" NIL nil', (String('x "y"'), Nil("NIL"), Nil("nil"))),
        ("(a (b)) c", (Parens((Atom("a"), Parens((Atom("b"),)))), Atom("c"))),
        (
            "body[header.fields (from to)] {3}\r\nabc",
            (
                Atom("body[header.fields"),
                Parens((Atom("from"), Atom("to"))),
                Atom("]"),
                String("abc", literal=True),
            ),
        ),
        ("x ~{2}\r\n\x00y", (Atom("x"), String("\x00y", literal=True))),
        (
            "ok text with ) paren",
            (Atom("ok"), Atom("text"), Atom("with"), Atom(")"), Atom("paren")),
        ),
    ],
)
def test_parse_args(line: str, args: tuple[object, ...]) -> None:
    assert parse_args(line) == args


# -- script parser -------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "t") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    return path


def test_parse_header_and_methods(tmp_path: Path) -> None:
    script = read_script(
        write(
            tmp_path,
            "capabilities: FOO bar\nstate: auth\nmessages: all\n\n"
            "ok noop\n* 1 exists\n"
            "select x\n* ok [uidnext $n]\nok [read-write]\n"
            "tag1 status a (messages)\ntag2 noop\n* status a (messages 0)\ntag2 ok\ntag1 no\n",
        )
    )
    assert script.capabilities == ("FOO", "bar")
    assert script.state == "auth"
    assert script.messages == -1
    one, two, three, logout = script.groups
    assert [(c.text, c.reply) for c in one.commands] == [("noop", (Atom("ok"),))]
    assert two.commands[0].reply == (Atom("ok"), Atom("[read-write]"))
    assert [c.tag for c in three.commands] == [1, 2]
    assert three.commands[0].reply == (Atom("no"),)
    # STATUS gets upstream's default `$!unordered=2`.
    assert three.untagged[0].args[2] == Parens((Atom("$!unordered=2"), Atom("messages"), Atom("0")))
    assert logout.commands[0].text == "logout"


def test_parse_default_fetch_flags_directives(tmp_path: Path) -> None:
    script = read_script(write(tmp_path, "\nok fetch 1 flags\n* 1 fetch (flags (\\seen))\n"))
    items = script.groups[0].untagged[0].args[2]
    assert isinstance(items, Parens)
    assert items.items[0] == Atom("$!unordered=2")
    flags = items.items[2]
    assert isinstance(flags, Parens)
    assert Atom("$!noextra") in flags.items
    assert Atom("$!ignore=\\recent") in flags.items


def test_parse_connections_multiline_and_ifenv(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "connections: 2\n\n"
        "2 ok append $mailbox {{{\nline1\n\n}}}\n"
        "!ifenv SCRIPTED_TEST_UNSET_VARIABLE\n1 ok never\n!else\n1 ok always\n!endif\n"
        "1 ok logout\n",
    )
    script = read_script(path, env={})
    append, always, logout = script.groups
    assert append.connection == 1
    assert append.commands[0].text == "append $mailbox {7}\r\nline1\r\n"
    assert always.commands[0].text == "always"
    assert logout.connection == 0  # the script logs out itself: nothing added


@pytest.mark.parametrize(
    "text",
    [
        "state: bogus\n\nok noop\n",
        "\nnoop\n",  # no reply
        "\ntag1 noop\ntag1 noop\ntag1 ok\n",
        "connections: 2\n\nok noop\n",  # no connection number
        "\n!ifenv X\nok noop\n",
        "\nok fetch 1 x\n* 1 fetch ($!unordered=2 uid)\n",
    ],
)
def test_parse_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ScriptError):
        read_script(write(tmp_path, text))


# -- matcher -------------------------------------------------------------------------------------


def matches(pattern: str, reply: str, v: Variables | None = None, prefix: bool = False) -> bool:
    return match_args(v or Variables({}), parse_args(pattern), parse_args(reply), prefix)


def test_variables_capture_and_compare() -> None:
    v = Variables({"mailbox": "box"})
    assert matches("1 fetch (uid $uid)", "1 FETCH (UID 7)", v)
    assert v.values["uid"] == "7"
    assert matches("2 fetch (uid $uid)", "2 FETCH (UID 7)", v)
    assert not matches("2 fetch (uid $uid)", "2 FETCH (UID 8)", v)
    assert matches("status $mailbox (messages 1)", "STATUS box (MESSAGES 1)", v)
    assert not matches("status $mailbox (messages 1)", "STATUS BOX (MESSAGES 1)", v)
    assert matches("ok [uidnext $next]", "OK [UIDNEXT 5] Predicted", v, prefix=True)
    assert v.values["next"] == "5"


def test_unordered_lists_and_flags() -> None:
    fetch = "1 fetch ($!unordered=2 flags ($!unordered $!noextra $!ignore=\\recent \\seen))"
    assert matches(fetch, "1 FETCH (FLAGS (\\Recent \\Seen))")
    assert not matches(fetch, "1 FETCH (FLAGS (\\Seen \\Deleted))")
    assert not matches(fetch, "1 FETCH (FLAGS ())")
    assert matches("list ($!unordered \\a) $ x", 'LIST (\\B \\A) "/" x')
    assert not matches("list ($!unordered $!ban=\\b \\a) $ x", 'LIST (\\B \\A) "/" x')
    assert not matches("search 1 2", "SEARCH 1 2 3")
    assert not matches("search 1 2 3", "SEARCH 1 2")
    assert matches("list () $ ${case:INBOX}", 'LIST () "/" INBOX')
    assert not matches("list () $ ${case:INBOX}", 'LIST () "/" inbox')


def test_relative_sequences_follow_expunges() -> None:
    v = Variables({})
    v.seqmap = [1, 2, 3, 4]
    assert matches("$1 expunge", "1 EXPUNGE", v)
    v.expunge(1)
    assert matches("$3 expunge", "2 EXPUNGE", v)
    assert not matches("$4 expunge", "4 EXPUNGE", v)


def test_modseq_variables_must_grow_by_the_gap() -> None:
    v = Variables({})
    assert matches("1 fetch (modseq ($modseq2))", "1 FETCH (MODSEQ (10))", v)
    assert not matches("2 fetch (modseq ($modseq5))", "2 FETCH (MODSEQ (12))", v)
    v = Variables({})
    assert matches("1 fetch (modseq ($modseq2))", "1 FETCH (MODSEQ (10))", v)
    assert matches("2 fetch (modseq ($modseq5))", "2 FETCH (MODSEQ (13))", v)


# -- whole runs against a fake server --------------------------------------------------------

Reply = Callable[[str], list[str]]  # command without its tag -> reply lines, "TAG" for the tag


class FakeServer:
    """Answers each command with `reply(command)`; synchronizing literals get "+ go"."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.received: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def session(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        conn.sendall(b"* OK [CAPABILITY IMAP4rev1 X-FAKE] fake ready\r\n")
        while line := reader.readline():
            text = line.decode("latin-1")
            while literal := re.search(r"\{(\d+)\}\r\n$", text):
                conn.sendall(b"+ go\r\n")
                text += reader.read(int(literal[1])).decode("latin-1")
                text += reader.readline().decode("latin-1")
            tag, _, command = text.rstrip("\r\n").partition(" ")
            self.received.append(command)
            lines = self.reply(command)
            if lines == ["HANG"]:
                continue
            conn.sendall("".join(x.replace("TAG", tag) + "\r\n" for x in lines).encode("latin-1"))
            if command.lower() == "logout":
                break
        conn.close()

    def target(self) -> Target:
        return Target("127.0.0.1", self.port, Account("u@example.test", "pw"), timeout=1.0)


def default_reply(command: str) -> list[str]:
    verb = command.split(" ")[0].lower()
    if verb == "logout":
        return ["* BYE bye", "TAG OK done"]
    if verb == "capability":
        return ["* CAPABILITY IMAP4rev1 X-FAKE", "TAG OK done"]
    if verb == "fetch":
        return ["* 1 FETCH (UID 5 BODY[] {5}\r\nab)\r\n FLAGS (\\Seen))", "TAG OK done"]
    return ["TAG OK done"]


@pytest.fixture
def fake() -> Iterator[Callable[[Reply], FakeServer]]:
    servers: list[FakeServer] = []

    def start(reply: Reply) -> FakeServer:
        servers.append(FakeServer(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.listener.close()


NONAUTH = "state: nonauth\n\n"


def run(tmp_path: Path, server: FakeServer, body: str, header: str = NONAUTH) -> tuple[str, str]:
    result = run_script(write(tmp_path, header + body), server.target())
    return result.outcome, result.detail


def test_passing_run_reads_literals(tmp_path: Path, fake: Callable[[Reply], FakeServer]) -> None:
    server = fake(default_reply)
    body = "ok fetch 1 (uid body[])\n* 1 fetch (uid $uid body[] {{{\nab)\n\n}}} flags (\\seen))\n"
    assert run(tmp_path, server, body) == ("pass", "")
    assert server.received == ["fetch 1 (uid body[])", "logout"]


def test_synchronizing_literal_waits_for_continuation(
    tmp_path: Path, fake: Callable[[Reply], FakeServer]
) -> None:
    server = fake(default_reply)
    assert run(tmp_path, server, "ok append x {{{\nhello\n}}}\n") == ("pass", "")
    assert server.received[0] == "append x {5}\r\nhello"


def test_setup_creates_and_appends(tmp_path: Path, fake: Callable[[Reply], FakeServer]) -> None:
    server = fake(default_reply)
    assert run(tmp_path, server, "ok noop\n", "messages: 2\n\n") == ("pass", "")
    verbs = [command.split(" ")[0] for command in server.received]
    assert verbs[:4] == ["LOGIN", "CAPABILITY", "LIST", "LSUB"]
    assert verbs[4:8] == ["CREATE", "APPEND", "APPEND", "SELECT"]
    first_append = server.received[5]
    assert first_append.startswith('APPEND "imaptest" "22-Feb-2008 17:06:23 +0000" {')
    assert "Subject: s1\r\n" in first_append


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("no noop\n", "expected tagged reply: no"),
        ("ok fetch 1 uid\n* 1 fetch (uid 6)\n", "missing untagged replies"),
        ("ok fetch 1 uid\n! 1 fetch ($!unordered=2 uid 5)\n", "unexpected untagged reply"),
        ("ok hang\n", "no reply in time"),
        ("ok noop $unset\n", "uninitialized variable"),
    ],
)
def test_failing_runs(
    tmp_path: Path, fake: Callable[[Reply], FakeServer], body: str, reason: str
) -> None:
    server = fake(lambda command: ["HANG"] if command == "hang" else default_reply(command))
    outcome, detail = run(tmp_path, server, body)
    assert outcome == "fail"
    assert reason in detail


def test_extra_untagged_fails_only_when_asked(
    tmp_path: Path, fake: Callable[[Reply], FakeServer]
) -> None:
    server = fake(default_reply)
    assert run(tmp_path, server, "ok fetch 1 uid\n")[0] == "pass"
    strict = NONAUTH + "ignore_extra_untagged: no\n"
    outcome, detail = run(tmp_path, server, "ok fetch 1 uid\n", strict.replace("\n\n", "\n") + "\n")
    assert outcome == "fail"
    assert "1 unexpected untagged replies" in detail


def test_missing_capability_skips(tmp_path: Path, fake: Callable[[Reply], FakeServer]) -> None:
    server = fake(default_reply)
    assert (
        run(tmp_path, server, "ok noop\n", "capabilities: X-FAKE\nstate: nonauth\n\n")[0] == "pass"
    )
    outcome, detail = run(tmp_path, server, "ok noop\n", "capabilities: QUOTA\nstate: nonauth\n\n")
    assert (outcome, detail) == ("skip", "server lacks QUOTA")
