"""A runner for Dovecot imaptest's scripted IMAP tests (`tests/imap/imaptest/FORMAT.md`).

The upstream runner is C inside the imaptest load generator; there is no Python port and no
library that speaks its format, so this is a hand-written re-implementation.  It follows the
upstream source (`src/test-parser.c`, `src/test-exec.c`, Dovecot's `imap-parser.c`) where
FORMAT.md is silent: how arguments are tokenized, which lists get default `$!` directives,
how `$var` captures, how relative `$n` sequences follow EXPUNGEs, how the test mailbox is set
up and how mbox messages are appended (each with its From_ line's date as INTERNALDATE).

Text is handled as latin-1 `str` throughout so that every byte of a script or a server reply
survives unchanged; case-insensitive comparisons fold ASCII only, as the C code does.

Command line: `python -m tests.imap.scripted --host H --port P --user U --password W [script ...]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

UPSTREAM_DIR = Path(__file__).with_name("imaptest") / "tests"
DEFAULT_MAILBOX = "imaptest"
DEFAULT_TIMEOUT = 10.0  # seconds for any one network read
ALL_MESSAGES = -1  # `messages: all`

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(text: str) -> str:
    """ASCII-only lower case (the C code's strcasecmp never folds 8-bit bytes)."""
    return text.translate(_ASCII_LOWER)


# -- IMAP arguments ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Atom:
    text: str


@dataclass(frozen=True, slots=True)
class String:
    """A quoted string or a literal (the two match alike)."""

    text: str
    literal: bool = False


@dataclass(frozen=True, slots=True)
class Nil:
    text: str = "NIL"


@dataclass(frozen=True, slots=True)
class Parens:
    items: tuple[Arg, ...]


Arg = Atom | String | Nil | Parens


class ParseError(ValueError):
    """A script or a server reply that cannot be tokenized."""


_LITERAL_AT_END = re.compile(r"~?\{(\d+)\+?\}$")


def parse_args(text: str) -> tuple[Arg, ...]:
    """Tokenize one IMAP line (literals inline as `{n}\\r\\n<n chars>`) like Dovecot's parser
    with ATOM_ALLCHARS: an atom runs to a space, a line end, or a `)` closing an open list, so
    `body[header.fields (from)]` is the atom `body[header.fields`, a list and the atom `]`."""
    stack: list[list[Arg]] = [[]]
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == " ":
            i += 1
        elif c in "\r\n":
            break
        elif c == '"':
            i, value = _quoted(text, i + 1)
            stack[-1].append(String(value))
        elif c == "{" or (c == "~" and text.startswith("{", i + 1)):
            i, value = _literal(text, i + (c == "~"))
            stack[-1].append(String(value, literal=True))
        elif c == "(":
            stack.append([])
            i += 1
        elif c == ")" and len(stack) > 1:
            items = stack.pop()
            stack[-1].append(Parens(tuple(items)))
            i += 1
        else:
            start = i
            while i < n and text[i] not in " \r\n" and not (text[i] == ")" and len(stack) > 1):
                i += 1
            word = text[start:i]
            stack[-1].append(Nil(word) if fold(word) == "nil" else Atom(word))
    if len(stack) != 1:
        raise ParseError(f"missing ')' in {text!r}")
    return tuple(stack[0])


def _quoted(text: str, i: int) -> tuple[int, str]:
    out: list[str] = []
    while i < len(text):
        c = text[i]
        if c == '"':
            return i + 1, "".join(out)
        if c == "\\" and i + 1 < len(text):
            i += 1
            c = text[i]
        out.append(c)
        i += 1
    raise ParseError(f"missing '\"' in {text!r}")


def _literal(text: str, i: int) -> tuple[int, str]:
    match = re.compile(r"\{(\d+)\+?\}\r?\n").match(text, i)
    if match is None:
        raise ParseError(f"bad literal at {text[i : i + 20]!r}")
    end = match.end() + int(match[1])
    if end > len(text):
        raise ParseError("literal longer than the data")
    return end, text[match.end() : end]


def render(args: Sequence[Arg]) -> str:
    """Arguments back as one readable line (literals shown quoted) for failure messages."""
    parts: list[str] = []
    for arg in args:
        match arg:
            case Atom(text) | Nil(text):
                parts.append(text)
            case String(text):
                parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
            case Parens(items):
                parts.append("(" + render(items) + ")")
    return " ".join(parts)


def astring(arg: Arg | None) -> str | None:
    return arg.text if isinstance(arg, Atom | String) else None


# -- the script -------------------------------------------------------------------------------

Existence = Literal["must", "must_not", "may"]
State = Literal["nonauth", "auth", "created", "appended", "selected"]
STATES: tuple[State, ...] = ("nonauth", "auth", "created", "appended", "selected")
_EXISTENCE: dict[str, Existence] = {"* ": "must", "! ": "must_not", "? ": "may"}
_REPLY_WORDS = {"ok": "ok", "no": "no", "bad": "bad", '""': ""}


@dataclass(frozen=True, slots=True)
class Untagged:
    args: tuple[Arg, ...]
    existence: Existence
    line: int


@dataclass(slots=True)
class Command:
    text: str  # before variable expansion; literals inline
    tag: int  # the script's `tagN`, 0 when it has none
    reply: tuple[Arg, ...] | None  # matched as a prefix of the tagged reply after the tag
    line: int  # 0 for the logout the runner adds


@dataclass(slots=True)
class Group:
    """Commands sent together on one connection; done when every one has its tagged reply."""

    connection: int  # 0-based
    commands: list[Command] = field(default_factory=list)
    untagged: list[Untagged] = field(default_factory=list)
    ordered: bool = False
    sleep: float = 0.0
    output: list[str] = field(default_factory=list)
    has_bye: bool = False

    def pending_replies(self) -> int:
        return sum(1 for command in self.commands if command.reply is None)


@dataclass(slots=True)
class Script:
    name: str
    mbox: Path
    capabilities: tuple[str, ...] = ()
    connections: int = 1
    users: dict[int, str] = field(default_factory=dict)  # connection -> username from header
    messages: int = 0
    state: State = "selected"
    ignore_extra_untagged: bool = True
    groups: list[Group] = field(default_factory=list)

    @property
    def needs_user2(self) -> bool:
        return any(value in ("$user2", "${user2}") for value in self.users.values())


class ScriptError(ValueError):
    """A script file that does not follow the format."""


def read_script(path: Path, env: dict[str, str] | None = None) -> Script:
    """Parse one test file and find its mbox: `<name>.mbox`, else the folder's `default.mbox`,
    else upstream's (so a folder of our own scripts needs none)."""
    candidates = [path.with_name(path.name + ".mbox"), path.with_name("default.mbox")]
    mbox = next((p for p in candidates if p.exists()), UPSTREAM_DIR / "default.mbox")
    script = Script(path.name, mbox)
    parser = _Parser(script, os.environ if env is None else env)
    for number, line in _logical_lines(path.read_bytes().decode("latin-1"), path.name):
        try:
            parser.line(number, line)
        except (ScriptError, ParseError) as error:
            raise ScriptError(f"{path.name} line {number}: {error}") from None
    parser.finish()
    return script


def _logical_lines(data: str, name: str) -> Iterator[tuple[int, str | None]]:
    """(line number, text) with `{{{ ... }}}` blocks folded into literals; None for a blank
    line (it ends the header).  As upstream reads them, a block's lines keep a CR the file has
    and get "\r\n" appended (just "\n" in a `~{{{` block); the last one added is dropped."""
    if data and not data.endswith("\n"):
        raise ScriptError(f"{name}: last line doesn't end with LF")
    raw = data.split("\n")[:-1]
    i = 0
    while i < len(raw):
        number, line = i + 1, raw[i].removesuffix("\r")
        i += 1
        if not line:
            yield number, None
            continue
        if line.startswith("#"):
            continue
        while line.endswith("{{{"):
            binary = line.endswith("~{{{")
            head = line[: -4 if binary else -3]
            body: list[str] = []
            while True:
                if i >= len(raw):
                    raise ScriptError(f"{name}: multiline reply at line {number} not ended")
                text = raw[i]
                i += 1
                if text.startswith("}}}"):
                    break
                body.append(text)
            content = ("\n" if binary else "\r\n").join(body)
            tail = text[3:].removesuffix("\r")
            line = f"{head}{'~' if binary else ''}{{{len(content)}}}\r\n{content}{tail}"
        yield number, line


class _Parser:
    def __init__(self, script: Script, env: Mapping[str, str]) -> None:
        self.script = script
        self.env = env
        self.header = True
        self.group: Group | None = None
        self.ifs: list[tuple[bool, bool]] = []  # (skip before this block, else seen)
        self.skip = False

    def line(self, number: int, line: str | None) -> None:
        if line is None:
            self.header = False
        elif self.header:
            self.header_line(line)
        else:
            self.command_line(number, line)

    def header_line(self, line: str) -> None:
        key, colon, value = line.partition(":")
        if not colon:
            raise ScriptError("missing ':'")
        key, value, s = fold(key.rstrip(" ")), value.lstrip(" "), self.script
        if key == "capabilities":
            s.capabilities = tuple(value.split())
        elif key == "connections":
            s.connections = int(value)
        elif key == "ignore_extra_untagged":
            s.ignore_extra_untagged = value.startswith("y")
        elif key.startswith("user ") and key[5:].isdigit() and int(key[5:]) > 0:
            s.users[int(key[5:]) - 1] = value
        elif key == "messages":
            s.messages = ALL_MESSAGES if value == "all" else int(value)
        elif key == "state" and fold(value) in STATES:
            s.state = STATES[STATES.index(fold(value))]
        else:
            raise ScriptError(f"unknown setting {line!r}")

    def command_line(self, number: int, line: str) -> None:
        if self.preprocess(line) or self.skip:
            return
        group, script = self.group, self.script
        if group is not None:
            if line.startswith("!sleep "):
                group.sleep = _interval(line[7:])
                return
            if line.startswith("!output "):
                group.output.append(line[8:])
                return
            if line == "!ordered":
                group.ordered = True
                return
            if line[:2] in _EXISTENCE:
                self.untagged(group, line[2:], _EXISTENCE[line[:2]], number)
                return
            if group.pending_replies():
                rest, conn = _connection_prefix(line, script.connections > 1)
                tag, reply_word, _ = _reply_prefix(rest)
                if reply_word is not None:
                    if script.connections > 1 and conn != group.connection:
                        raise ScriptError("reply for wrong connection or missing client index")
                    self.finish_command(group, tag, rest)
                    return
        if group is None or not group.pending_replies():
            group = self.group = Group(0)
            script.groups.append(group)
        if script.connections > 1:
            line, conn = _connection_prefix(line, True)
            if conn is None:
                raise ScriptError("missing client index")
            if group.commands and group.connection != conn:
                raise ScriptError("all pipelined commands must use the same connection")
            group.connection = conn
            script.connections = max(script.connections, conn + 1)
        tag, reply_word, line = _reply_prefix(line)
        if tag == 0 and group.pending_replies():
            raise ScriptError("missing reply from previous command group")
        if tag and any(command.tag == tag for command in group.commands):
            raise ScriptError("tag reused within command group")
        if not group.commands and line[:2] in _EXISTENCE:
            raise ScriptError("banner checks are not supported")
        reply = None if reply_word is None else (Atom(reply_word),)
        group.commands.append(Command(line, tag, reply, number))

    def preprocess(self, line: str) -> bool:
        """`!ifenv`, `!ifnenv`, `!else`, `!endif`; True if the line was one of them."""
        word, _, name = line.partition(" ")
        if word in ("!ifenv", "!ifnenv") and name:
            self.ifs.append((self.skip, False))
            present = name in self.env
            if present != (word == "!ifenv"):
                self.skip = True
        elif line == "!else":
            if not self.ifs or self.ifs[-1][1]:
                raise ScriptError("!else without !ifenv")
            outer, _ = self.ifs[-1]
            self.ifs[-1] = (outer, True)
            if not outer:
                self.skip = not self.skip
        elif line == "!endif":
            if not self.ifs:
                raise ScriptError("!endif without !ifenv")
            self.skip = self.ifs.pop()[0]
        else:
            return False
        return True

    def untagged(self, group: Group, text: str, existence: Existence, number: int) -> None:
        args = parse_args(text)
        name = astring(args[0]) if args else None
        if name and (name[0] == "$" or name[0].isdigit()):
            name = astring(args[1]) if len(args) > 1 else None
        args = _with_directives(args, fold(name or ""), None)
        if fold(name or "").startswith("bye"):
            if existence == "may":
                raise ScriptError("? BYE not supported")
            group.has_bye = group.has_bye or existence == "must"
        group.untagged.append(Untagged(args, existence, number))

    def finish_command(self, group: Group, tag: int, text: str) -> None:
        command = next((c for c in group.commands if c.tag == tag), None)
        if command is None:
            raise ScriptError("reply for unknown tag")
        if command.reply is not None:
            raise ScriptError("command already has a reply")
        command.reply = parse_args(text)[1 if tag else 0 :]

    def finish(self) -> None:
        if self.ifs:
            raise ScriptError(f"{self.script.name}: !ifenv not closed with !endif")
        if not self.script.groups:
            raise ScriptError(f"{self.script.name}: no commands in file")
        if self.group is not None and self.group.pending_replies():
            raise ScriptError(f"{self.script.name}: missing reply at the end")
        # Upstream logs out on the first connection unless the script says goodbye itself.
        if not any(
            group.has_bye or any(fold(c.text) == "logout" for c in group.commands)
            for group in self.script.groups
        ):
            self.script.groups.append(Group(0, [Command("logout", 0, (Atom("ok"),), 0)]))


def _interval(text: str) -> float:
    """`!sleep` values: `100ms`, `2s`, `2 secs`."""
    match = re.fullmatch(r"(\d+)\s*(ms|msecs?|s|secs?)?", text.strip())
    if match is None:
        raise ScriptError(f"invalid !sleep value {text!r}")
    return int(match[1]) / (1000 if (match[2] or "").startswith("m") else 1)


def _connection_prefix(line: str, multi: bool) -> tuple[str, int | None]:
    word, _, rest = line.partition(" ")
    if multi and word.isdigit() and int(word) > 0:
        return rest, int(word) - 1
    return line, None


def _reply_prefix(line: str) -> tuple[int, str | None, str]:
    """(N of a leading `tagN`, ok/no/bad/"" if one follows, the rest of the line)."""
    tag = 0
    word, space, rest = line.partition(" ")
    if fold(word).startswith("tag") and word[3:].isdigit() and int(word[3:]) > 0 and space:
        tag, line = int(word[3:]), rest
        word, space, rest = line.partition(" ")
    reply = _REPLY_WORDS.get(fold(word))
    return tag, reply, (rest if reply is not None else line)


def _with_directives(
    args: tuple[Arg, ...], reply: str, path: tuple[int, ...] | None
) -> tuple[Arg, ...]:
    """Add upstream's default `$!` directives to lists that have none: FETCH items unordered in
    pairs with FLAGS unordered and exact (ignoring \\Recent), LIST/LSUB flags unordered, STATUS
    items unordered in pairs.  `path` is the index of each enclosing list, outermost first."""
    out: list[Arg] = []
    prev_atom: str | None = None
    for index, arg in enumerate(args):
        if isinstance(arg, Atom):
            prev_atom = fold(arg.text)
        if not isinstance(arg, Parens):
            out.append(arg)
            continue
        inner = (index,) if path is None else (*path, index)
        items = arg.items
        if not _directives(items):
            items = _default_directives(reply, inner, prev_atom) + items
        else:
            _check_directives(items)
        out.append(Parens(_with_directives(items, reply, inner)))
    return tuple(out)


def _directives(items: tuple[Arg, ...]) -> list[str]:
    found: list[str] = []
    for item in items:
        if not (isinstance(item, Atom) and item.text.startswith("$!")):
            break
        found.append(item.text[2:])
    return found


def _check_directives(items: tuple[Arg, ...]) -> None:
    chain = 1
    for directive in _directives(items):
        if directive.startswith("unordered="):
            chain = int(directive[10:])
        elif directive not in ("unordered", "ordered", "noextra", "extra") and not (
            directive.startswith(("ignore=", "ban="))
        ):
            raise ScriptError(f"unknown directive $!{directive}")
    if (len(items) - len(_directives(items))) % chain:
        raise ScriptError(f"list of {len(items)} is not in chains of {chain}")


def _default_directives(
    reply: str, path: tuple[int, ...], prev_atom: str | None
) -> tuple[Arg, ...]:
    if reply in ("list", "lsub") and path == (1,):
        return (Atom("$!unordered"),)
    if reply in ("status", "fetch") and path == (2,):
        return (Atom("$!unordered=2"),)
    if reply == "fetch" and len(path) == 2 and path[0] == 2 and prev_atom == "flags":
        names = (
            "unordered",
            "noextra",
            "ignore=\\recent",
            "ignore=$HasAttachment",
            "ignore=$HasNoAttachment",
        )
        return tuple(Atom("$!" + name) for name in names)
    return ()


# -- matching ---------------------------------------------------------------------------------


class Variables:
    """`$name` values, the relative sequence map and `$modseqN` ordering of one test run."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.added: list[str] = []
        self.seqmap: list[int] = []  # start-of-group sequence -> now (0: expunged)
        self.modseq_index = 0
        self.modseq_value = 0

    def relative(self, seq: int) -> str:
        if seq == 0:
            return "<zero seq>"
        if seq > len(self.seqmap):
            return "<out of range>"
        return str(self.seqmap[seq - 1]) if self.seqmap[seq - 1] else "<expunged>"

    def expunge(self, seq: int) -> None:
        for i in range(seq - 1, len(self.seqmap)):
            if self.seqmap[i] == seq:
                self.seqmap[i] = 0
            elif self.seqmap[i] > seq:
                self.seqmap[i] -= 1

    def expand(self, text: str) -> str:
        """A command with its variables replaced; `$$` is a `$`."""

        def value(match: re.Match[str]) -> str:
            if match[0] == "$$":
                return "$"
            name = match[1] if match[1] is not None else match[2]
            if name.isdigit():
                return self.relative(int(name))
            if name not in self.values:
                raise MatchError(f"uninitialized variable ${name}")
            return self.values[name]

        return _VARIABLE.sub(value, text)

    def capture_modseq(self, index: int, text: str) -> str:
        """A new `$modseqN`: at least the last one seen plus the gap in N, else a value that
        cannot match (upstream shows the minimum in the failure)."""
        if not text.isdigit():
            return "$modseq-not-number"
        if self.modseq_index > index:
            return "$modseq-order-mismatch"
        least = self.modseq_value + index - self.modseq_index
        value, shown = int(text), text
        if value < least:
            value, shown = least, f"$modseq-at-least-{least}"
        self.modseq_index, self.modseq_value = index, value
        return shown


_VARIABLE = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z0-9_]+)")
_NAME = re.compile(r"\{([^}]*)\}|([A-Za-z0-9_]*)")


class MatchError(Exception):
    """The server's replies do not match the script."""


def _expand_input(v: Variables, pattern: str, text: str) -> tuple[str, bool] | None:
    """Match one pattern word against the server's word, capturing unset variables (each takes
    the input up to the next literal pattern character); the pattern expanded, and whether the
    final comparison folds case (`${case:...}` makes it exact).  None on a mismatch."""
    out: list[str] = []
    fold_case, p, t = True, 0, 0
    while p < len(pattern):
        c = pattern[p]
        if c != "$" or pattern.startswith("$$", p):
            p += 2 if c == "$" else 1
            if t >= len(text) or fold(c) != fold(text[t]):
                return None
            out.append(c)
            t += 1
            continue
        name_match = _NAME.match(pattern, p + 1)
        assert name_match is not None
        name = name_match[1] if name_match[1] is not None else name_match[2]
        p = name_match.end()
        if name.isdigit():
            value = v.relative(int(name))
        elif name.startswith("case:"):
            fold_case, value = False, name[5:]
        elif name and name in v.values:
            value = v.values[name]
        else:
            rest = pattern[p:]
            if rest.startswith("$") and not rest.startswith("$$"):
                expanded = _expand_input(v, rest, text[t:])
                rest = expanded[0] if expanded else ""
            stop = fold(rest[0]) if rest else ""
            end = t
            while end < len(text) and fold(text[end]) != stop:
                end += 1
            value = text[t:end]
            if name.startswith("modseq") and name[6:].isdigit():
                value = v.values[name] = v.capture_modseq(int(name[6:]), value)
            elif name:
                v.values[name] = value
                v.added.append(name)
        out.append(value)
        if not text.startswith(value, t):
            return None
        t += len(value)
    return "".join(out), fold_case


def match_args(
    v: Variables, pattern: Sequence[Arg], args: Sequence[Arg], prefix: bool = False
) -> bool:
    """Upstream's test_imap_match_args: every pattern argument in order; with `prefix` (OK, NO,
    BAD, BYE and tagged replies) the last one may be a prefix and more arguments may follow."""
    i = 0
    for index, want in enumerate(pattern):
        got = args[i] if i < len(args) else None
        if isinstance(want, Nil):
            if not isinstance(got, Nil):
                return False
        elif isinstance(want, Parens):
            if not isinstance(got, Parens) or not match_list(v, want.items, got.items):
                return False
        elif want.text == "$" and isinstance(got, Parens):
            pass
        elif want.text == "$]":
            while isinstance(got, Atom) and "]" not in got.text:
                i += 1
                got = args[i] if i < len(args) else None
        else:
            text = astring(got)
            if text is None:
                return False
            expanded = _expand_input(v, want.text, text)
            if expanded is None:
                return False
            want_text, fold_case = expanded
            if prefix and index == len(pattern) - 1:
                text = text[: len(want_text)]
            if (fold(text) != fold(want_text)) if fold_case else (text != want_text):
                return False
        i += 1
    return prefix or i >= len(args)


def match_list(v: Variables, pattern: Sequence[Arg], args: Sequence[Arg]) -> bool:
    """A parenthesised list under its `$!` directives."""
    unordered, chain, noextra = False, 1, -1
    ignores: list[str] = []
    bans: list[str] = []
    directives = _directives(tuple(pattern))
    for directive in directives:
        if directive.startswith("unordered"):
            unordered = True
            noextra = 0 if noextra == -1 else noextra
            if directive.startswith("unordered="):
                chain = int(directive[10:])
        elif directive == "ordered":
            unordered = False
        elif directive in ("extra", "noextra"):
            noextra = int(directive == "noextra")
        elif directive.startswith("ignore="):
            ignores.append(fold(directive[7:]))
        elif directive.startswith("ban="):
            bans.append(fold(directive[4:]))
    pattern = pattern[len(directives) :]
    if not unordered:
        return match_args(v, pattern, args)
    if len(args) % chain:
        return False
    matched = [False] * len(args)
    for start in range(0, len(pattern), chain):
        want = pattern[start : start + chain]
        for i in range(0, len(args), chain):
            if match_args(v, want, args[i : i + chain]):
                matched[i] = True
                break
        else:
            return False
    for i in range(0, len(args), chain):
        name = astring(args[i])
        if matched[i] or name is None:
            continue
        if noextra != 0 and fold(name) not in ignores:
            return False
        if noextra == 0 and fold(name) in bans:
            return False
    return True


# -- the connection ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    kind: Literal["untagged", "tagged", "continuation"]
    tag: str
    args: tuple[Arg, ...]  # after the tag
    text: str  # the whole response as received, for messages


class Connection:
    """One IMAP connection: reads whole responses (literals included) with a timeout."""

    def __init__(self, index: int, host: str, port: int, timeout: float) -> None:
        self.index = index
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buffer = b""
        self.counter = 0
        self.exists = 0  # messages in the selected mailbox, as the server told us
        self.mailbox = DEFAULT_MAILBOX  # where a bare `append` goes (follows SELECT)
        self.capabilities: set[str] = set()
        self.seen_bye = False
        self.closed = False

    def next_tag(self) -> str:
        self.counter += 1
        return f"{self.index + 1}.{self.counter}"

    def send(self, data: str) -> None:
        self.sock.sendall(data.encode("latin-1"))

    def _line(self) -> str:
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise MatchError(f"connection {self.index + 1}: no reply in time") from None
            if not chunk:
                self.closed = True
                raise EOFError
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("latin-1") + "\n"

    def _exactly(self, size: int) -> str:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.closed = True
                raise EOFError
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data.decode("latin-1")

    def read(self) -> Response:
        """The next whole response; EOFError when the server has closed the connection."""
        text = self._line()
        while (literal := _LITERAL_AT_END.search(text.rstrip("\r\n"))) is not None:
            text += self._exactly(int(literal[1])) + self._line()
        tag, _, rest = text.partition(" ")
        tag = tag.rstrip("\r\n")
        if tag == "+":
            return Response("continuation", tag, (), text)
        try:
            args = parse_args(rest)
        except ParseError:
            # Free text after OK/NO/BAD/BYE may hold anything (an odd quote): keep its words.
            args = tuple(Atom(word) for word in rest.split())
        kind: Literal["untagged", "tagged"] = "untagged" if tag == "*" else "tagged"
        if kind == "untagged":
            self._track(args)
        return Response(kind, tag, args, text.rstrip("\r\n"))

    def _track(self, args: tuple[Arg, ...]) -> None:
        """What upstream's client state needs: message count, capabilities, BYE."""
        words = [fold(astring(arg) or "") for arg in args[:2]]
        if len(words) == 2 and words[0].isdigit():
            number = int(words[0])
            if words[1] == "exists":
                if number < self.exists:
                    raise MatchError(f"message count dropped {self.exists} -> {number}")
                self.exists = number
            elif words[1] == "expunge":
                if not 0 < number <= self.exists:
                    raise MatchError(f"expunge of sequence {number} with {self.exists} messages")
                self.exists -= 1
        elif words and words[0] == "capability":
            self.capabilities = {fold(astring(arg) or "") for arg in args[1:]}
        elif words and words[0] == "bye":
            self.seen_bye = True
        if words and words[0] in ("ok", "no", "bad", "bye") and len(args) > 1:
            self.resp_code_capability(args[1:])

    def resp_code_capability(self, args: Sequence[Arg]) -> None:
        first = astring(args[0]) if args else None
        if first is None or fold(first) != "[capability":
            return
        names: list[str] = []
        for arg in args[1:]:
            word = astring(arg) or ""
            names.append(word.rstrip("]"))
            if word.endswith("]"):
                break
        self.capabilities = {fold(name) for name in names if name}

    def close(self) -> None:
        self.sock.close()


# -- running a script -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class Target:
    """Where to run: the server and its test accounts (user2 for two-user scripts)."""

    host: str
    port: int
    user: Account
    user2: Account | None = None
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    outcome: Literal["pass", "fail", "skip"]
    detail: str = ""
    output: tuple[str, ...] = ()


class Skip(Exception):
    """The server lacks a capability the script needs."""


def mbox_messages(path: Path) -> list[tuple[str, str]]:
    """(INTERNALDATE, message with CRLF line ends) per message of an mbox file.

    Each message is every line after its From_ line up to the next From_ line, blank lines
    included, as upstream's mbox source reads it.  The From_ date has no zone; upstream takes
    it as the machine's local time, we take it as UTC (the same thing on CI)."""
    messages: list[tuple[str, list[str]]] = []
    for line in path.read_bytes().decode("latin-1").split("\n"):
        date = _from_line_date(line)
        if date is not None:
            messages.append((date, []))
        elif messages:
            messages[-1][1].append(line.removesuffix("\r"))
    if not messages:
        raise ScriptError(f"{path}: not an mbox file")
    if messages[-1][1] and messages[-1][1][-1] == "":
        messages[-1][1].pop()  # the split after the final LF
    return [(date, "".join(line + "\r\n" for line in lines)) for date, lines in messages]


_FROM_LINE = re.compile(
    r"From \S+\s+(?:[A-Za-z]{3}\s+)?([A-Za-z]{3})\s+(\d{1,2})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?"
    r"(?:\s+[A-Za-z]+)?\s+(\d{4})(?:\s+([-+]\d{4}))?"
)


def _from_line_date(line: str) -> str | None:
    match = _FROM_LINE.match(line)
    if match is None:
        return None
    month, day, hour, minute, second, year, zone = match.groups()
    when = dt.datetime.strptime(
        f"{day} {month} {year} {hour}:{minute}:{second or '00'}", "%d %b %Y %H:%M:%S"
    )
    return when.strftime("%d-%b-%Y %H:%M:%S ") + (zone or "+0000")


class _Run:
    def __init__(self, script: Script, target: Target) -> None:
        self.script = script
        self.target = target
        self.messages = mbox_messages(script.mbox)
        self.next_message = 0
        self.conns: list[Connection] = []
        self.output: list[str] = []
        accounts = [self.account(i) for i in range(script.connections)]
        values = {"mailbox": DEFAULT_MAILBOX, "mailbox_url": DEFAULT_MAILBOX}
        for i, account in enumerate(accounts):
            suffix = "" if i == 0 else str(i + 1)
            username, _, domain = account.user.partition("@")
            values |= {
                f"user{suffix}": account.user,
                f"username{suffix}": username,
                f"domain{suffix}": domain or target.host,
                f"password{suffix}": account.password,
            }
        self.accounts = accounts
        self.v = Variables(values)

    def account(self, index: int) -> Account:
        name = self.script.users.get(index)
        if name is None:
            return self.target.user
        if name in ("$user2", "${user2}"):
            if self.target.user2 is None:
                raise Skip("needs a second user")
            return self.target.user2
        return Account(name, self.target.user.password)

    # -- setup, as upstream's test_send_lstate_commands does it

    def simple(self, conn: Connection, command: str, allow_no: bool = False) -> list[Response]:
        """Send a setup command and wait for its tagged reply; its untagged replies."""
        tag = conn.next_tag()
        conn.send(f"{tag} {command}\r\n")
        untagged: list[Response] = []
        while True:
            response = conn.read()
            if response.kind == "untagged":
                untagged.append(response)
            elif response.tag == tag:
                status = fold(astring(response.args[0]) or "") if response.args else ""
                if status != "ok" and not (allow_no and status == "no"):
                    raise MatchError(f"setup: {command} failed: {response.text}")
                conn.resp_code_capability(response.args[1:])
                return untagged
            else:
                raise MatchError(f"setup: unexpected {response.text!r}")

    def setup(self) -> None:
        script, t = self.script, self.target
        for i in range(script.connections):
            conn = Connection(i, t.host, t.port, t.timeout)
            self.conns.append(conn)
            greeting = conn.read()
            if greeting.kind != "untagged" or not conn.capabilities:
                self.simple(conn, "CAPABILITY")
        first = self.conns[0]
        if script.state == "nonauth":
            self.check_capabilities(first)
            return
        for conn, account in zip(self.conns, self.accounts, strict=True):
            self.simple(conn, f"LOGIN {quote(account.user)} {quote(account.password)}")
        self.simple(first, "CAPABILITY")
        self.check_capabilities(first)
        names: dict[str, list[str]] = {"list": [], "lsub": []}
        for verb in names:
            for response in self.simple(first, f'{verb.upper()} "" {quote(DEFAULT_MAILBOX + "*")}'):
                args = response.args
                if len(args) >= 4 and fold(astring(args[0]) or "") == verb:
                    names[verb].append(astring(args[3]) or "")
        for verb, command in (("list", "DELETE"), ("lsub", "UNSUBSCRIBE")):
            for name in sorted(names[verb], key=fold, reverse=True):
                self.simple(first, f"{command} {quote(name)}", allow_no=True)
        if script.state == "auth":
            return
        self.simple(first, f"CREATE {quote(DEFAULT_MAILBOX)}")
        if script.state == "created":
            return
        count = len(self.messages) if script.messages == ALL_MESSAGES else script.messages
        for _ in range(count):
            backlog: list[Response] = []
            tag = self.append(
                first, f"{quote(DEFAULT_MAILBOX)} {{date}}", first.next_tag(), backlog
            )
            done = [r for r in backlog if r.tag == tag]
            response = done[0] if done else self.until_tagged(first, tag)
            if fold(astring(response.args[0]) or "") != "ok":
                raise MatchError(f"setup: APPEND failed: {response.text}")
        if script.state == "appended":
            return
        for conn in self.conns:
            self.simple(conn, f"SELECT {quote(DEFAULT_MAILBOX)}")

    def check_capabilities(self, conn: Connection) -> None:
        missing = [c for c in self.script.capabilities if fold(c) not in conn.capabilities]
        if missing:
            raise Skip(f"server lacks {' '.join(missing)}")

    def append(self, conn: Connection, args: str, tag: str, backlog: list[Response]) -> str:
        """Send APPEND of the next mbox message (wrapping round); `{date}` in args becomes its
        From_ date.  Replies read while waiting for "+" go to `backlog`."""
        date, message = self.messages[self.next_message % len(self.messages)]
        self.next_message += 1
        head = f"{tag} APPEND {args.replace('{date}', quote(date))} {{{len(message)}}}\r\n"
        if self.send_literal(conn, head, tag, backlog):
            conn.send(message + "\r\n")
        return tag

    def send_literal(self, conn: Connection, head: str, tag: str, seen: list[Response]) -> bool:
        """Send text ending in a synchronizing literal's `{n}\\r\\n` and wait for `+`; False if
        the command got its tagged reply instead (it is then put back in `seen`)."""
        conn.send(head)
        while True:
            response = conn.read()
            if response.kind == "continuation":
                return True
            seen.append(response)
            if response.kind == "tagged" and response.tag == tag:
                return False

    def until_tagged(self, conn: Connection, tag: str) -> Response:
        while True:
            response = conn.read()
            if response.kind == "tagged" and response.tag == tag:
                return response

    # -- the command groups

    def run(self) -> None:
        for index, group in enumerate(self.script.groups):
            try:
                self.run_group(group)
            except MatchError as error:
                first = group.commands[0]
                where = f"line {first.line}" if first.line else "the closing logout"
                raise MatchError(
                    f"group {index + 1}/{len(self.script.groups)} ({where}: {first.text!r}):\n"
                    f"{error}"
                ) from None
            self.output += [self.v.expand(text) for text in group.output]
            time.sleep(group.sleep)

    def run_group(self, group: Group) -> None:
        try:
            self._run_group(group)
        except EOFError:
            raise MatchError("unexpected disconnection") from None

    def _run_group(self, group: Group) -> None:
        conn = self.conns[group.connection]
        v = self.v
        v.seqmap = list(range(1, conn.exists + 1))
        logout = any(
            c.line == 0 or fold(c.text) == "logout" or group.has_bye for c in group.commands
        )
        state = _GroupState(group, logout)
        backlog: list[Response] = []
        for command in group.commands:
            tag = self.send_command(conn, command, backlog)
            state.pending[tag] = command
            if command is group.commands[0]:
                state.first_tag = tag
            for response in backlog:
                self.handle(conn, state, response)
            backlog.clear()
        while state.pending:
            try:
                response = conn.read()
            except EOFError:
                if group.has_bye and conn.seen_bye:
                    for command in group.commands:
                        if command.reply != (Atom(""),):
                            raise MatchError(
                                f'only "" is allowed as the tagged reply when BYE happens, '
                                f"the script expects {render(command.reply or ())}"
                            ) from None
                    break
                raise MatchError("unexpected disconnection" + state.received()) from None
            self.handle(conn, state, response)
        state.check_complete()

    def send_command(self, conn: Connection, command: Command, backlog: list[Response]) -> str:
        text = self.v.expand(command.text)
        tag = conn.next_tag()
        verb, _, rest = text.partition(" ")
        if fold(verb) in ("select", "examine") and rest:
            name = _first_astring(rest)
            conn.exists = 0  # a new view, as upstream's client starts one
            if name is not None:
                conn.mailbox = name
        if fold(text) == "append":
            return self.append(conn, f"{quote(conn.mailbox)} {{date}}", tag, backlog)
        if fold(verb) == "append" and not _append_has_body(rest):
            return self.append(conn, rest, tag, backlog)
        # Literals in the command text (from `{{{` blocks or typed in): a synchronizing one
        # waits for the server's "+", a LITERAL+ one goes straight on (RFC 7888).
        pieces = re.split(r"(~?\{\d+\+?\}\r?\n)", text)
        out = f"{tag} {pieces[0]}"
        for i in range(1, len(pieces), 2):
            size = int(re.sub(r"\D", "", pieces[i]))
            marker = pieces[i].rstrip("\r\n") + "\r\n"
            body, rest_text = pieces[i + 1][:size], pieces[i + 1][size:]
            if "+" in marker:
                out += marker + body + rest_text
                continue
            if not self.send_literal(conn, out + marker, tag, backlog):
                return tag
            out = body + rest_text
        conn.send(out + "\r\n")
        return tag

    def handle(self, conn: Connection, state: _GroupState, response: Response) -> None:
        if response.kind == "continuation":
            raise MatchError(f"unexpected continuation: {response.text}" + state.received())
        if response.kind == "tagged":
            command = state.pending.pop(response.tag, None)
            if command is None:
                raise MatchError(f"tagged reply for an unknown tag: {response.text}")
            self.check_tagged(conn, command, response, state)
            return
        state.seen.append(response.text)
        self.match_untagged(state, response)
        words = [fold(astring(arg) or "") for arg in response.args[:2]]
        if len(words) == 2 and words[0].isdigit() and words[1] == "expunge":
            self.v.expunge(int(words[0]))

    def check_tagged(
        self, conn: Connection, command: Command, response: Response, state: _GroupState
    ) -> None:
        assert command.reply is not None
        status = fold(astring(response.args[0]) or "") if response.args else ""
        want = command.reply
        ok = status == "bad" if want[:1] == (Atom("bad"),) else status in ("ok", "no")
        self.v.values["tag"] = response.tag
        try:
            ok = ok and match_args(self.v, want, response.args, prefix=True)
        finally:
            del self.v.values["tag"]
        if not ok:
            raise MatchError(
                f"expected tagged reply: {render(want) or '(any)'}\n"
                f"received: {response.text}" + state.received()
            )
        verb = fold(command.text.split(" ", 1)[0])
        if status == "ok" and verb in ("close", "unselect"):
            conn.exists = 0
        conn.resp_code_capability(response.args[1:])

    def match_untagged(self, state: _GroupState, response: Response) -> None:
        group, v = state.group, self.v
        if not group.untagged and (self.script.ignore_extra_untagged or state.logout):
            return
        first = astring(response.args[0]) if response.args else None
        prefix = first is not None and fold(first) in ("ok", "no", "bad", "bye")
        found_some = False
        for i, want in enumerate(group.untagged):
            if state.found[i]:
                continue
            v.added.clear()
            v.values["tag"] = state.first_tag
            try:
                matched = match_args(v, want.args, response.args, prefix)
            finally:
                v.values.pop("tag", None)
            if matched:
                if want.existence == "must_not":
                    raise MatchError(
                        f"unexpected untagged reply matched line {want.line}: "
                        f"{render(want.args)}\nreceived: {response.text}"
                    )
                state.found[i] = found_some = True
                v.added.clear()
                if group.ordered:
                    break
                continue
            for name in v.added:
                v.values.pop(name, None)
            v.added.clear()
            if group.ordered and want.existence == "must":
                break
        if not found_some and not self.script.ignore_extra_untagged and not state.logout:
            state.extra.append(response.text)


def _first_astring(text: str) -> str | None:
    try:
        args = parse_args(text)
    except ParseError:
        return None
    return astring(args[0]) if args else None


def _append_has_body(text: str) -> bool:
    """Whether `APPEND mailbox [(flags)] ["date"] ...` carries the message itself."""
    try:
        args = list(parse_args(text))
    except ParseError:
        return True
    i = 1
    if i < len(args) and isinstance(args[i], Parens):
        i += 1
    if i < len(args) and isinstance(args[i], String) and not args[i].literal:  # type: ignore[union-attr]
        i += 1
    if i >= len(args):
        return False
    arg = args[i]
    return (isinstance(arg, String) and arg.literal) or (
        isinstance(arg, Atom) and fold(arg.text) == "catenate"
    )


@dataclass(slots=True)
class _GroupState:
    group: Group
    logout: bool
    pending: dict[str, Command] = field(default_factory=dict)
    first_tag: str = ""
    seen: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    found: list[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.found = [False] * len(self.group.untagged)

    def received(self) -> str:
        lines = "".join(f"\n    {line}" for line in self.seen)
        return f"\n  untagged replies received:{lines or ' none'}"

    def check_complete(self) -> None:
        missing = [
            want
            for want, found in zip(self.group.untagged, self.found, strict=True)
            if want.existence == "must" and not found
        ]
        if missing:
            lines = "".join(f"\n    line {w.line}: {render(w.args)}" for w in missing)
            raise MatchError(f"missing untagged replies:{lines}" + self.received())
        if self.extra:
            raise MatchError(f"{len(self.extra)} unexpected untagged replies" + self.received())


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_script(path: Path, target: Target) -> Result:
    """Set up the test mailbox, run the script and say whether the server passed."""
    script = read_script(path)
    run: _Run | None = None
    try:
        run = _Run(script, target)
        run.setup()
        run.run()
    except Skip as why:
        return Result(script.name, "skip", str(why))
    except MatchError as error:
        return Result(script.name, "fail", str(error), tuple(run.output if run else ()))
    except EOFError:
        return Result(script.name, "fail", "the server closed the connection during setup")
    except OSError as error:
        return Result(script.name, "fail", f"network error: {error}")
    finally:
        for conn in run.conns if run else ():
            conn.close()
    return Result(script.name, "pass", "", tuple(run.output))


def script_paths(directory: Path) -> list[Path]:
    """The test files of a directory, as upstream picks them: not `.mbox`, not dot files,
    not directories."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".mbox")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.imap.scripted", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=143)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--user2", help="second account, for scripts with `user 2: $user2`")
    parser.add_argument("--password2")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("scripts", nargs="*", type=Path, help="files or directories")
    options = parser.parse_args(argv)
    user2 = None
    if options.user2:
        user2 = Account(options.user2, options.password2 or options.password)
    target = Target(
        options.host, options.port, Account(options.user, options.password), user2, options.timeout
    )
    paths: list[Path] = []
    for given in options.scripts or [UPSTREAM_DIR]:
        paths += script_paths(given) if given.is_dir() else [given]
    counts = {"pass": 0, "fail": 0, "skip": 0}
    for path in paths:
        result = run_script(path, target)
        counts[result.outcome] += 1
        print(
            f"{result.outcome.upper():4} {result.name}"
            + (f": {result.detail}" if result.detail else "")
        )
    print(
        f"{len(paths)} scripts: {counts['pass']} passed, {counts['fail']} failed, "
        f"{counts['skip']} skipped"
    )
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
