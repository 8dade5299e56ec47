"""The Sieve language's syntax (RFC 5228 §8): text in, a tree of generic commands out.

Pure: no knowledge of which commands exist; script.py checks that against the extensions.

Hand-written rather than sievelib's parser: sievelib is a client-side editor's parser.  It
hands back strings still quoted and escaped (multi-line ones still dot-stuffed), lets any
`require` through, lacks ereject, the string and mailboxexists tests, :user/:detail and
i;ascii-numeric, and can only be extended by adding classes to its module globals, shared by
the whole process.  The grammar itself is ten productions; the tree we need is simpler.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


class SieveError(Exception):
    """A script that does not parse or that a check refuses; `line` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message if line is None else f"line {line}: {message}")
        self.message = message
        self.line = line


@dataclass(frozen=True, slots=True)
class Tag:
    name: str  # lower-cased, with its colon: ":copy"
    line: int


@dataclass(frozen=True, slots=True)
class Number:
    value: int
    line: int


@dataclass(frozen=True, slots=True)
class Strings:
    values: tuple[str, ...]
    is_list: bool  # written in brackets, so a place that wants one string refuses it
    line: int


Argument = Tag | Number | Strings


@dataclass(frozen=True, slots=True)
class Node:
    """One command or test: `name arguments (tests) ({ block } | ;)`."""

    name: str  # lower-cased
    arguments: tuple[Argument, ...]
    tests: tuple[Node, ...]
    block: tuple[Node, ...] | None  # None: ended by ";" (or a test)
    line: int


# §8.1: identifiers, tags, numbers with K/M/G, quoted strings, multi-line strings, comments.
_TOKEN: Final = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
  | (?P<hash>\#[^\n]*)
  | (?P<bracket>/\*.*?\*/)
  | (?P<multiline>text:[ \t]*(?:\#[^\n]*)?\r?\n(?P<lines>(?:[^\n]*\n)*?)\.\r?(?:\n|\Z))
  | (?P<quoted>"(?:[^"\\]|\\.)*")
  | (?P<tag>:[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9]+[KkMmGg]?)
  | (?P<identifier>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[\[\](){};,])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPE: Final = re.compile(r"\\(.)", re.DOTALL)
_QUANTIFIERS: Final = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# Far beyond any script written by hand; the parser, compiler and interpreter recurse, and
# a script of a million "not"s must be an error, not a RecursionError.
MAX_NESTING: Final = 100


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "identifier", "tag", "number", "string" or the punctuation itself
    text: str
    line: int
    value: str | int = ""


def _multiline(body: str) -> str:
    # §2.4.2: a line starting with "." had one more "." added (dot-stuffing).
    lines = body.split("\n")
    return "\n".join(line[1:] if line.startswith(".") else line for line in lines)


def tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    line = 1
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            near = text[position : position + 20].split("\n")[0]
            raise SieveError(f"unexpected text {near!r}", line)
        kind = match.lastgroup
        piece = match.group()
        if kind == "multiline":
            tokens.append(_Token("string", piece, line, _multiline(match.group("lines") or "")))
        elif kind == "quoted":
            tokens.append(_Token("string", piece, line, _ESCAPE.sub(r"\1", piece[1:-1])))
        elif kind == "number":
            digits, unit = (piece[:-1], piece[-1].lower()) if piece[-1].isalpha() else (piece, "")
            tokens.append(_Token("number", piece, line, int(digits) * _QUANTIFIERS.get(unit, 1)))
        elif kind in ("tag", "identifier"):
            tokens.append(_Token(kind, piece, line, piece.lower()))
        elif kind == "punct":
            tokens.append(_Token(piece, piece, line))
        line += piece.count("\n")
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.position = 0
        self.depth = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, *kinds: str) -> _Token:
        token = self.peek()
        if token is None:
            raise SieveError(f"script ends where {' or '.join(kinds)} was expected", self.line())
        if token.kind not in kinds:
            raise SieveError(
                f"{token.text!r} found where {' or '.join(kinds)} was expected", token.line
            )
        self.position += 1
        return token

    def line(self) -> int:
        return self.tokens[-1].line if self.tokens else 1

    def commands(self, closing: str | None) -> tuple[Node, ...]:
        found: list[Node] = []
        while (token := self.peek()) is not None and token.kind != closing:
            found.append(self.command())
        if closing is not None:
            self.take(closing)
        return tuple(found)

    def command(self) -> Node:
        name = self.take("identifier")
        self.enter(name)
        arguments, tests = self.arguments()
        block = None if self.take(";", "{").kind == ";" else self.commands("}")
        self.depth -= 1
        return Node(str(name.value), arguments, tests, block, name.line)

    def test(self) -> Node:
        name = self.take("identifier")
        self.enter(name)
        arguments, tests = self.arguments()
        self.depth -= 1
        return Node(str(name.value), arguments, tests, None, name.line)

    def enter(self, name: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise SieveError(f"nested more than {MAX_NESTING} deep", name.line)

    def arguments(self) -> tuple[tuple[Argument, ...], tuple[Node, ...]]:
        found: list[Argument] = []
        while (token := self.peek()) is not None:
            if token.kind == "tag":
                found.append(Tag(str(token.value), token.line))
            elif token.kind == "number":
                assert isinstance(token.value, int)
                found.append(Number(token.value, token.line))
            elif token.kind == "string":
                found.append(Strings((str(token.value),), False, token.line))
            elif token.kind == "[":
                found.append(self.string_list())
                continue
            elif token.kind == "identifier":
                return tuple(found), (self.test(),)
            elif token.kind == "(":
                return tuple(found), self.test_list()
            else:
                break
            self.position += 1
        return tuple(found), ()

    def string_list(self) -> Strings:
        opening = self.take("[")
        values = [str(self.take("string").value)]
        while self.take(",", "]").kind == ",":
            values.append(str(self.take("string").value))
        return Strings(tuple(values), True, opening.line)

    def test_list(self) -> tuple[Node, ...]:
        self.take("(")
        tests = [self.test()]
        while self.take(",", ")").kind == ",":
            tests.append(self.test())
        return tuple(tests)


def parse(text: str) -> tuple[Node, ...]:
    """The script's top-level commands; SieveError when it is not Sieve."""
    return _Parser(tokenize(text)).commands(None)
