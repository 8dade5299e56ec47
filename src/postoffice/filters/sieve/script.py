"""What a Sieve script may say: the commands, their arguments and the extensions we support.

`compile_script` turns grammar.py's generic tree into `Command`s whose arguments are sorted
into tags and positional values, refusing (SieveError with the line) anything RFC 5228 or an
extension's RFC says is an error that can be seen before running: an unknown command, an
extension used without `require`, a missing or misplaced argument, an unknown comparator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from postoffice.filters.sieve.grammar import Node, Number, SieveError, Strings, Tag, parse

__all__ = ["SIEVE_EXTENSIONS", "Command", "Script", "SieveError", "check_script", "compile_script"]

SIEVE_EXTENSIONS: Final[tuple[str, ...]] = (
    "fileinto",
    "reject",
    "ereject",
    "envelope",
    "body",
    "relational",
    "subaddress",
    "copy",
    "imap4flags",
    "vacation",
    "variables",
    "date",
    "mailbox",
    "comparator-i;ascii-numeric",
)
# RFC 5228 §2.7.3: these two are always there, and a script may still require them.
_IMPLICIT: Final = frozenset({"comparator-i;octet", "comparator-i;ascii-casemap"})
COMPARATORS: Final = frozenset({"i;octet", "i;ascii-casemap", "i;ascii-numeric"})
RELATIONS: Final = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})
DATE_PARTS: Final = frozenset(
    {
        "year",
        "month",
        "day",
        "date",
        "julian",
        "hour",
        "minute",
        "second",
        "time",
        "iso8601",
        "std11",
        "zone",
        "weekday",
    }
)
_ZONE: Final = re.compile(r"[+-][0-9]{4}")
_VARIABLE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ADDRESS: Final = re.compile(r"[^@\s]+@[^@\s]+")

Value = str | int | tuple[str, ...]
ArgumentKind = Literal["string", "strings", "number"]


@dataclass(frozen=True, slots=True)
class _TagSpec:
    group: str  # tags of one group exclude each other (":is" and ":contains" are "match")
    takes: ArgumentKind | None = None
    extension: str | None = None


@dataclass(frozen=True, slots=True)
class _Spec:
    kind: Literal["action", "test", "control"]
    extension: str | None = None
    tags: Mapping[str, _TagSpec] = field(default_factory=dict)
    positional: tuple[ArgumentKind, ...] = ()
    optional_first: bool = False  # imap4flags' leading variable name may be left out
    tests: Literal["none", "one", "list"] = "none"
    block: bool = False


_COMPARATOR: Final = {":comparator": _TagSpec("comparator", "string")}
_MATCH: Final = {
    ":is": _TagSpec("match"),
    ":contains": _TagSpec("match"),
    ":matches": _TagSpec("match"),
    ":count": _TagSpec("match", "string", "relational"),
    ":value": _TagSpec("match", "string", "relational"),
}
_ADDRESS_PART: Final = {
    ":all": _TagSpec("part"),
    ":localpart": _TagSpec("part"),
    ":domain": _TagSpec("part"),
    ":user": _TagSpec("part", extension="subaddress"),
    ":detail": _TagSpec("part", extension="subaddress"),
}
_FLAGS: Final = {":flags": _TagSpec("flags", "strings", "imap4flags")}

_SPECS: Final[Mapping[str, _Spec]] = {
    # RFC 5228 §3: controls (require is read by compile_script, before these)
    "if": _Spec("control", tests="one", block=True),
    "elsif": _Spec("control", tests="one", block=True),
    "else": _Spec("control", block=True),
    "stop": _Spec("control"),
    # §4 and extensions: actions
    "keep": _Spec("action", tags=_FLAGS),
    "discard": _Spec("action"),
    "redirect": _Spec(
        "action", tags={":copy": _TagSpec("copy", extension="copy")}, positional=("string",)
    ),
    "fileinto": _Spec(
        "action",
        "fileinto",
        {
            ":copy": _TagSpec("copy", extension="copy"),
            ":create": _TagSpec("create", extension="mailbox"),
            **_FLAGS,
        },
        ("string",),
    ),
    "reject": _Spec("action", "reject", positional=("string",)),
    "ereject": _Spec("action", "ereject", positional=("string",)),
    "setflag": _Spec("action", "imap4flags", positional=("string", "strings"), optional_first=True),
    "addflag": _Spec("action", "imap4flags", positional=("string", "strings"), optional_first=True),
    "removeflag": _Spec(
        "action", "imap4flags", positional=("string", "strings"), optional_first=True
    ),
    "vacation": _Spec(
        "action",
        "vacation",
        {
            ":days": _TagSpec("days", "number"),
            ":subject": _TagSpec("subject", "string"),
            ":from": _TagSpec("from", "string"),
            ":addresses": _TagSpec("addresses", "strings"),
            ":mime": _TagSpec("mime"),
            ":handle": _TagSpec("handle", "string"),
        },
        ("string",),
    ),
    "set": _Spec(
        "action",
        "variables",
        {
            # RFC 5229 §4.1: one modifier per precedence level
            ":lower": _TagSpec("case"),
            ":upper": _TagSpec("case"),
            ":lowerfirst": _TagSpec("first"),
            ":upperfirst": _TagSpec("first"),
            ":quotewildcard": _TagSpec("quote"),
            ":length": _TagSpec("length"),
        },
        ("string", "string"),
    ),
    # §5 and extensions: tests
    "true": _Spec("test"),
    "false": _Spec("test"),
    "not": _Spec("test", tests="one"),
    "allof": _Spec("test", tests="list"),
    "anyof": _Spec("test", tests="list"),
    "exists": _Spec("test", positional=("strings",)),
    "size": _Spec(
        "test", tags={":over": _TagSpec("size"), ":under": _TagSpec("size")}, positional=("number",)
    ),
    "header": _Spec("test", tags={**_COMPARATOR, **_MATCH}, positional=("strings", "strings")),
    "address": _Spec(
        "test", tags={**_COMPARATOR, **_MATCH, **_ADDRESS_PART}, positional=("strings", "strings")
    ),
    "envelope": _Spec(
        "test",
        "envelope",
        {**_COMPARATOR, **_MATCH, **_ADDRESS_PART},
        ("strings", "strings"),
    ),
    "body": _Spec(
        "test",
        "body",
        {
            **_COMPARATOR,
            **_MATCH,
            ":raw": _TagSpec("transform"),
            ":content": _TagSpec("transform", "strings"),
            ":text": _TagSpec("transform"),
        },
        ("strings",),
    ),
    "string": _Spec("test", "variables", {**_COMPARATOR, **_MATCH}, ("strings", "strings")),
    "hasflag": _Spec(
        "test", "imap4flags", {**_COMPARATOR, **_MATCH}, ("strings", "strings"), optional_first=True
    ),
    "date": _Spec(
        "test",
        "date",
        {
            ":zone": _TagSpec("zone", "string"),
            ":originalzone": _TagSpec("zone"),
            **_COMPARATOR,
            **_MATCH,
        },
        ("string", "string", "strings"),
    ),
    "currentdate": _Spec(
        "test",
        "date",
        {":zone": _TagSpec("zone", "string"), **_COMPARATOR, **_MATCH},
        ("string", "strings"),
    ),
    "mailboxexists": _Spec("test", "mailbox", positional=("strings",)),
}


@dataclass(frozen=True, slots=True)
class Command:
    """A checked command or test; tags are looked up by group, values by tag."""

    name: str
    line: int
    chosen: Mapping[str, str] = field(default_factory=dict)  # group -> tag, ("match" -> ":is")
    values: Mapping[str, Value] = field(default_factory=dict)  # tag -> its argument
    positional: tuple[Value, ...] = ()
    tests: tuple[Command, ...] = ()
    block: tuple[Command, ...] = ()

    def has(self, tag: str) -> bool:
        return tag in self.values or tag in self.chosen.values()

    def choice(self, group: str, default: str) -> str:
        return self.chosen.get(group, default)

    def string(self, index: int) -> str:
        value = self.positional[index]
        assert isinstance(value, str)
        return value

    def strings(self, index: int) -> tuple[str, ...]:
        value = self.positional[index]
        assert isinstance(value, tuple)
        return value

    def number(self, index: int) -> int:
        value = self.positional[index]
        assert isinstance(value, int)
        return value

    def tag_string(self, tag: str) -> str | None:
        value = self.values.get(tag)
        return value if isinstance(value, str) else None

    def tag_strings(self, tag: str) -> tuple[str, ...] | None:
        value = self.values.get(tag)
        return value if isinstance(value, tuple) else None

    def tag_number(self, tag: str) -> int | None:
        value = self.values.get(tag)
        return value if isinstance(value, int) else None


@dataclass(frozen=True, slots=True)
class Script:
    commands: tuple[Command, ...]
    extensions: frozenset[str]
    tests_mailboxes: bool  # uses mailboxexists: the stage then looks the mailboxes up


def _value(argument: Tag | Number | Strings, kind: ArgumentKind, what: str) -> Value:
    if kind == "number" and isinstance(argument, Number):
        return argument.value
    if kind == "strings" and isinstance(argument, Strings):
        return argument.values
    if kind == "string" and isinstance(argument, Strings) and not argument.is_list:
        return argument.values[0]
    wanted = {"number": "a number", "strings": "a string list", "string": "a string"}[kind]
    raise SieveError(f"{what} needs {wanted}", argument.line)


class _Compiler:
    def __init__(self, extensions: frozenset[str]) -> None:
        self.extensions = extensions
        self.tests_mailboxes = False

    def need(self, extension: str | None, what: str, line: int) -> None:
        if extension is not None and extension not in self.extensions:
            raise SieveError(f'{what} needs require "{extension}"', line)

    def block(self, nodes: tuple[Node, ...]) -> tuple[Command, ...]:
        compiled: list[Command] = []
        for node in nodes:
            if node.name == "require":
                raise SieveError("require must come before any other command", node.line)
            if node.name in ("elsif", "else") and (
                not compiled or compiled[-1].name not in ("if", "elsif")
            ):
                raise SieveError(f"{node.name} must follow if or elsif", node.line)
            compiled.append(self.command(node, "control", "action"))
        return tuple(compiled)

    def command(self, node: Node, *kinds: str) -> Command:
        spec = _SPECS.get(node.name)
        if spec is None:
            raise SieveError(f"unknown command {node.name!r}", node.line)
        if spec.kind not in kinds:
            place = "a test" if "test" in kinds else "a command"
            raise SieveError(f"{node.name} is not {place}", node.line)
        self.need(spec.extension, node.name, node.line)
        if spec.block != (node.block is not None):
            wanted = "a block" if spec.block else "a semicolon"
            raise SieveError(f"{node.name} must be followed by {wanted}", node.line)
        chosen, values, positional = self.arguments(node, spec)
        wanted_tests = {"none": (0, 0), "one": (1, 1), "list": (1, 10**9)}[spec.tests]
        if not wanted_tests[0] <= len(node.tests) <= wanted_tests[1]:
            raise SieveError(f"{node.name} takes {spec.tests} test", node.line)
        command = Command(
            node.name,
            node.line,
            chosen,
            values,
            positional,
            tuple(self.command(test, "test") for test in node.tests),
            self.block(node.block) if node.block is not None else (),
        )
        self.check(command)
        return command

    def arguments(
        self, node: Node, spec: _Spec
    ) -> tuple[dict[str, str], dict[str, Value], tuple[Value, ...]]:
        chosen: dict[str, str] = {}
        values: dict[str, Value] = {}
        rest = list(node.arguments)
        # RFC 5228 §2.6.2: tagged arguments come first
        while rest and isinstance(tag := rest[0], Tag):
            rest.pop(0)
            tag_spec = spec.tags.get(tag.name)
            if tag_spec is None:
                raise SieveError(f"{node.name} has no {tag.name} argument", tag.line)
            self.need(tag_spec.extension, tag.name, tag.line)
            if tag_spec.group in chosen:
                raise SieveError(f"{tag.name} conflicts with {chosen[tag_spec.group]}", tag.line)
            chosen[tag_spec.group] = tag.name
            if tag_spec.takes is not None:
                if not rest:
                    raise SieveError(f"{tag.name} needs an argument", tag.line)
                values[tag.name] = _value(rest.pop(0), tag_spec.takes, tag.name)
        kinds = spec.positional
        if spec.optional_first and len(rest) == len(kinds) - 1:
            kinds = kinds[1:]
        elif spec.optional_first:
            self.need("variables", f"{node.name} with a variable name", node.line)
        if len(rest) != len(kinds):
            if any(isinstance(argument, Tag) for argument in rest):
                raise SieveError(f"tagged arguments of {node.name} come first", node.line)
            raise SieveError(f"{node.name} takes {len(spec.positional)} arguments", node.line)
        positional = tuple(
            _value(argument, kind, node.name) for argument, kind in zip(rest, kinds, strict=True)
        )
        if spec.optional_first and len(kinds) < len(spec.positional):
            positional = ((), *positional) if node.name == "hasflag" else ("", *positional)
        return chosen, values, positional

    def check(self, command: Command) -> None:
        """What each command's RFC rules out beyond the argument shapes."""
        line = command.line
        comparator = command.tag_string(":comparator")
        if comparator is not None:
            if comparator not in COMPARATORS:
                raise SieveError(f"unknown comparator {comparator!r}", line)
            if comparator == "i;ascii-numeric":
                self.need("comparator-i;ascii-numeric", comparator, line)
                # RFC 4790 §9.1: ascii-numeric compares numbers; it cannot find substrings
                if command.choice("match", ":is") in (":contains", ":matches"):
                    raise SieveError("i;ascii-numeric cannot do :contains or :matches", line)
        for tag in (":count", ":value"):
            relation = command.tag_string(tag)
            if relation is not None and relation.lower() not in RELATIONS:
                raise SieveError(f"unknown relation {relation!r}", line)
        match command.name:
            case "envelope":
                for part in command.strings(0):
                    if part.lower() not in ("from", "to"):
                        raise SieveError(f"unknown envelope part {part!r}", line)
            case "redirect":
                address = command.string(0)
                if "${" not in address and not _ADDRESS.fullmatch(address):
                    raise SieveError(f"invalid address {address!r}", line)
            case "fileinto" if not command.string(0):
                raise SieveError("fileinto needs a mailbox name", line)
            case "set" if not _VARIABLE_NAME.fullmatch(command.string(0)):
                raise SieveError(f"invalid variable name {command.string(0)!r}", line)
            case "date" | "currentdate":
                part = command.string(1 if command.name == "date" else 0)
                if "${" not in part and part.lower() not in DATE_PARTS:
                    raise SieveError(f"unknown date part {part!r}", line)
                zone = command.tag_string(":zone")
                if zone is not None and "${" not in zone and not _ZONE.fullmatch(zone):
                    raise SieveError(f"invalid zone {zone!r}", line)
            case "vacation":
                sender = command.tag_string(":from")
                if sender is not None and "${" not in sender and "@" not in sender:
                    raise SieveError(f"invalid :from address {sender!r}", line)
            case "size" if "size" not in command.chosen:
                raise SieveError("size needs :over or :under", line)
            case "mailboxexists":
                self.tests_mailboxes = True


def compile_script(text: str) -> Script:
    """The checked script; SieveError for one that does not parse or that we cannot run."""
    nodes = parse(text)
    extensions: set[str] = set()
    start = 0
    while start < len(nodes) and nodes[start].name == "require":
        require = nodes[start]
        if len(require.arguments) != 1 or not isinstance(require.arguments[0], Strings):
            raise SieveError("require takes a string list", require.line)
        if require.block is not None or require.tests:
            raise SieveError("require must be followed by a semicolon", require.line)
        for name in require.arguments[0].values:
            if name not in SIEVE_EXTENSIONS and name not in _IMPLICIT:
                raise SieveError(f"unsupported extension {name!r}", require.line)
            extensions.add(name)
        start += 1
    compiler = _Compiler(frozenset(extensions))
    commands = compiler.block(nodes[start:])
    return Script(commands, compiler.extensions, compiler.tests_mailboxes)


def check_script(text: str) -> None:
    """Raise SieveError (with the line) for a script that does not parse or that asks for an
    extension we do not have; ManageSieve's PUTSCRIPT and CHECKSCRIPT answer with it."""
    compile_script(text)
