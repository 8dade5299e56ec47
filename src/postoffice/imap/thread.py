"""THREAD (RFC 5256 §2): ORDEREDSUBJECT, REFERENCES, and the THREAD response payload.

Hand-written because the algorithms are the RFC's own (REFERENCES is Jamie Zawinski's,
with the RFC's rules for dummies, loops and subject merging) over the keys the store keeps
per message (`SortFields`).  Every walk over the tree is iterative: a long reply chain is a
deep tree, and recursion would hit Python's limit on a real mailbox.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from postoffice.imap.sort import casemap, sent_time
from postoffice.store.model import SortFields

__all__ = ["ThreadNode", "render_threads", "thread_orderedsubject", "thread_references"]


@dataclass(frozen=True, slots=True)
class ThreadNode:
    """One message of a thread (uid None: a dummy standing for a missing parent)."""

    uid: int | None
    children: tuple[ThreadNode, ...] = ()


def _order(fields: SortFields) -> tuple[float, int]:
    # RFC 5256 §2.2, §2.3 (6): by sent date; equal dates keep sequence (= UID) order
    return sent_time(fields), fields.uid


def thread_orderedsubject(fields: Sequence[SortFields]) -> list[ThreadNode]:
    """RFC 5256 §2.2: one thread per base subject, its first message the parent of the rest."""
    ordered = sorted(fields, key=lambda f: (casemap(f.base_subject), *_order(f)))
    threads: list[tuple[SortFields, list[SortFields]]] = []
    subject: str | None = None
    for f in ordered:
        key = casemap(f.base_subject)
        if key == subject:
            threads[-1][1].append(f)
        else:
            threads.append((f, []))
            subject = key
    # the threads are ordered by the sent date of their first message
    threads.sort(key=lambda thread: _order(thread[0]))
    # the second and later messages are siblings, children of the first
    return [
        ThreadNode(first.uid, tuple(ThreadNode(f.uid) for f in rest)) for first, rest in threads
    ]


# -- REFERENCES ----------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Container:
    """RFC 5256 §2.3's container: a message, or a dummy (fields None) for a missing one."""

    fields: SortFields | None = None
    parent: _Container | None = None
    children: list[_Container] = field(default_factory=list)
    key: tuple[float, int] = (0.0, 0)  # step (6) sort key, set once the children are sorted


def _adopt(parent: _Container, child: _Container) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _would_loop(parent: _Container, child: _Container) -> bool:
    """Whether making `parent` the parent of `child` closes a loop (child is its ancestor)."""
    if not child.children:
        # the usual case (a new message, a reference not seen before) needs no walk up
        return parent is child
    node: _Container | None = parent
    while node is not None:
        if node is child:
            return True
        node = node.parent
    return False


def _postorder(roots: list[_Container]) -> Iterator[_Container]:
    """Every container below (and including) `roots`, children before their parent."""
    stack = [(root, False) for root in reversed(roots)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            yield node
            continue
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(node.children))


def _link(fields: Sequence[SortFields]) -> list[_Container]:
    """Steps (1) and (2): the parent/child links and the root set."""
    by_id: dict[str, _Container] = {}
    containers: list[_Container] = []

    def container(message_id: str) -> _Container:
        found = by_id.get(message_id)
        if found is None:
            found = by_id[message_id] = _Container()
            containers.append(found)
        return found

    for f in fields:
        # (1) a message without a Message-ID, or with one already taken, gets a unique one
        this = container(f.message_id) if f.message_id else None
        if this is None or this.fields is not None:
            this = _Container()
            containers.append(this)
        this.fields = f
        # (1) References, else the first Message-ID of In-Reply-To
        references = f.references or ((f.in_reply_to,) if f.in_reply_to else ())
        previous: _Container | None = None
        for message_id in references:
            referenced = container(message_id)
            # (1A) link the chain, keeping existing parents and never closing a loop
            if (
                previous is not None
                and referenced.parent is None
                and not _would_loop(previous, referenced)
            ):
                _adopt(previous, referenced)
            previous = referenced
        # (1B) the message's own last reference wins over a parent guessed from others'
        # (probably truncated) References, unless it would close a loop
        if this.parent is not None:
            this.parent.children.remove(this)
            this.parent = None
        if previous is not None and not _would_loop(previous, this):
            _adopt(previous, this)
    # (2) the root set: containers without a parent
    return [c for c in containers if c.parent is None]


def _prune(roots: list[_Container]) -> list[_Container]:
    """Step (4): drop childless dummies, splice other dummies' children into their place."""
    for node in _postorder(roots):
        node.children = _spliced(node, node.children, at_root=False)
    return _spliced(None, roots, at_root=True)


def _spliced(
    parent: _Container | None, children: list[_Container], *, at_root: bool
) -> list[_Container]:
    kept: list[_Container] = []
    for child in children:
        # (4B) a dummy's children are promoted, but not to the root unless it has only one
        if child.fields is None and not (at_root and len(child.children) > 1):
            for grandchild in child.children:
                grandchild.parent = parent
            kept.extend(child.children)  # (4A) none for a childless dummy
        else:
            kept.append(child)
    return kept


_SUBJ_BLOB = re.compile(r"\[[^\[\]]*\] ?")
_WSP_RUN = re.compile(r"[ \t\r\n]+")


def _is_reply_or_forward(fields: SortFields) -> bool:
    """Whether extracting the base subject removed a Re:/Fwd: leader, "(fwd)" or "[fwd: ]".

    The other removals (whitespace, leading blobs while text remains) are redone here; only
    a reply or forward marker can leave the base subject shorter than what they leave.
    """
    text = _WSP_RUN.sub(" ", fields.subject).strip(" ")
    start = 0
    while (blob := _SUBJ_BLOB.match(text, start)) is not None and blob.end() < len(text):
        start = blob.end()
    return len(fields.base_subject) < len(text) - start


def _first_message(node: _Container) -> SortFields:
    # step (5B): a dummy stands for its first (oldest, once sorted) child
    while node.fields is None:
        node = node.children[0]
    return node.fields


def _gather_subjects(roots: list[_Container]) -> list[_Container]:
    """Step (5): merge root threads whose messages have the same base subject."""
    firsts = [_first_message(root) for root in roots]
    subjects = [casemap(first.base_subject) for first in firsts]
    reply = {
        id(root): _is_reply_or_forward(first) for root, first in zip(roots, firsts, strict=True)
    }
    table: dict[str, _Container] = {}
    for root, subject in zip(roots, subjects, strict=True):
        if not subject:
            continue  # (5B ii) messages without a subject are not gathered
        held = table.get(subject)
        # (5B iv) a dummy is the better root, and so is an original over a reply
        if held is None or (
            held.fields is not None
            and (root.fields is None or (reply[id(held)] and not reply[id(root)]))
        ):
            table[subject] = root
    absorbed: set[int] = set()  # id() of roots that went below another
    dummies: list[_Container] = []
    for root, subject in zip(roots, subjects, strict=True):
        held = table.get(subject) if subject else None
        if held is None or held is root or id(root) in absorbed:
            continue
        absorbed.add(id(root))
        if root.fields is None:
            # (5C) two dummies: the children of both become siblings
            for child in list(root.children):
                _adopt(held, child)
        elif held.fields is None or (reply[id(root)] and not reply[id(held)]):
            # (5C) under a dummy, or a reply under its original: a child of the held one
            _adopt(held, root)
        else:
            # (5C) two originals or two replies: siblings under a new dummy, which takes
            # the held message's place in the table and among the roots
            dummy = _Container()
            _adopt(dummy, held)
            _adopt(dummy, root)
            absorbed.add(id(held))
            dummies.append(dummy)
            table[subject] = dummy
    return [root for root in roots if id(root) not in absorbed] + dummies


def _sort(roots: list[_Container]) -> list[_Container]:
    """Step (6): siblings by sent date; a dummy sorts as its first child."""
    for node in _postorder(roots):
        node.children.sort(key=lambda c: c.key)
        node.key = _order(node.fields) if node.fields is not None else node.children[0].key
    return sorted(roots, key=lambda c: c.key)


def _nodes(roots: list[_Container]) -> list[ThreadNode]:
    """Step (7): the containers as immutable ThreadNodes."""
    built: dict[int, ThreadNode] = {}
    for node in _postorder(roots):
        built[id(node)] = ThreadNode(
            None if node.fields is None else node.fields.uid,
            tuple(built.pop(id(child)) for child in node.children),
        )
    return [built[id(root)] for root in roots]


def thread_references(fields: Sequence[SortFields]) -> list[ThreadNode]:
    """RFC 5256 §2.3: threads from Message-ID, In-Reply-To and References, then subjects."""
    roots = _prune(_link(sorted(fields, key=lambda f: f.uid)))
    # (5B) needs each dummy's oldest child first, so sort before gathering and again after
    roots = _sort(roots)
    return _nodes(_sort(_gather_subjects(roots)))


# -- the response ----------------------------------------------------------------------------


def render_threads(threads: Sequence[ThreadNode], number: Callable[[int], int]) -> bytes:
    """The THREAD response payload, e.g. b"(2)(3 6 (4 23)(44 7 96))" (RFC 5256 §4).

    `number` maps a UID to what the client asked for: a sequence number, or the UID itself.
    """
    out = bytearray()
    # Work items: bytes to emit as they are, or a node whose thread-members come next.
    stack: list[bytes | ThreadNode] = []
    for root in reversed(threads):
        stack += [b")", root, b"("]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out += item
            continue
        node: ThreadNode = item
        first = True
        while True:
            # RFC 5256 §4 thread-members: an only child follows its parent in the same list
            if node.uid is not None:
                out += b"%s%d" % (b"" if first else b" ", number(node.uid))
                first = False
            if len(node.children) != 1:
                break
            node = node.children[0]
        if node.children:
            # thread-nested: two or more children, each its own parenthesised list
            if not first:
                out += b" "
            for child in reversed(node.children):
                stack += [b")", child, b"("]
    return bytes(out)
