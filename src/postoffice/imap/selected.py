"""The selected mailbox as one session sees it (RFC 9051 §7.5.1 ordering rules).

Sequence numbers belong to a session, not to the mailbox: this view maps them to UIDs and
turns the store's change events into the untagged responses the client may be sent now.
Expunges are held back while a command that forbids them runs (FETCH, STORE and SEARCH by
sequence number), so a client's numbers never shift under it mid-command.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

from postoffice.imap import responses as w
from postoffice.imap.commands import SeqSet
from postoffice.store.events import Event, Expunged, FlagsChanged, MessagesAdded, Subscription
from postoffice.store.model import Flag, Mailbox


class RecentClaims:
    """Which new messages some session of this process has already been told are \\Recent.

    RFC 3501 §2.3.2: a message is recent in exactly one session.  The store keeps the mark
    each SELECT claims up to; arrivals while sessions have the mailbox selected are shared
    out here, first come first served, without a write per message.
    """

    def __init__(self) -> None:
        self._last: dict[int, int] = {}

    def floor(self, mailbox_id: int, stored: int) -> int:
        """UIDs above this are still unclaimed, given the store's mark."""
        return max(stored, self._last.get(mailbox_id, 0))

    def claim(self, mailbox_id: int, uids: Iterable[int]) -> set[int]:
        last = self._last.get(mailbox_id, 0)
        fresh = {uid for uid in uids if uid > last}
        if fresh:
            self._last[mailbox_id] = max(fresh)
        return fresh


class BadSet(Exception):
    """A sequence number beyond the mailbox (RFC 9051 §6.4.4: a BAD)."""


@dataclass(slots=True)
class Options:
    """What the client enabled, deciding the shape of unsolicited responses."""

    rev2: bool = False
    condstore: bool = False
    qresync: bool = False


@dataclass(slots=True, eq=False)
class SelectedMailbox:
    mailbox: Mailbox
    readonly: bool
    uids: array[int]  # sequence number n is uids[n - 1]
    subscription: Subscription
    highestmodseq: int
    claims: RecentClaims | None  # None when read-only: EXAMINE claims nothing
    recent: set[int] = field(default_factory=set)  # rev1 \Recent: arrived while selected
    saved: list[int] = field(default_factory=list)  # RFC 5182 "$", as UIDs
    expunged: set[int] = field(default_factory=set)  # known expunged, not yet announced
    own_changes: set[tuple[int, int]] = field(default_factory=set)  # (uid, modseq) we reported
    announced_exists: int = 0

    def __post_init__(self) -> None:
        self.announced_exists = len(self.uids)

    def close(self) -> None:
        self.subscription.close()

    # -- numbers ---------------------------------------------------------------------------------

    def seq_of(self, uid: int) -> int:
        """The sequence number of a UID in view, 0 if it is not."""
        index = bisect.bisect_left(self.uids, uid)
        return index + 1 if index < len(self.uids) and self.uids[index] == uid else 0

    def resolve(self, seqset: SeqSet, uid: bool, strict: bool = True) -> list[int]:
        """The UIDs in view that a set names, ascending; `strict`: a sequence number past
        the end is a BadSet, else it names nothing."""
        uids = self.uids
        if seqset.saved:
            return [u for u in self.saved if self.seq_of(u)]
        picked: set[int] = set()
        if uid:
            top = uids[-1] if uids else 0
            for lo, hi in seqset.ranges:
                lo, hi = lo or top, hi or top
                if lo > hi:
                    lo, hi = hi, lo
                start = bisect.bisect_left(uids, lo)
                end = bisect.bisect_right(uids, hi)
                picked.update(uids[start:end])
        else:
            count = len(uids)
            for lo, hi in seqset.ranges:
                lo, hi = lo or count, hi or count
                if lo > hi:
                    lo, hi = hi, lo
                if hi > count or lo < 1:
                    if strict:
                        raise BadSet("Invalid message sequence number")
                    hi = min(hi, count)
                picked.update(uids[lo - 1 : hi])
        return sorted(picked)

    # -- change events ---------------------------------------------------------------------------

    def absorb(self, events: Iterable[Event]) -> None:
        """Fold the store's events into the view's pending state (no output yet)."""
        for event in events:
            match event:
                case MessagesAdded(uids=added, highestmodseq=modseq):
                    last = self.uids[-1] if self.uids else 0
                    fresh = [u for u in added if u > last]
                    if fresh:
                        self.uids = self.uids + array("I", fresh)
                    if self.claims is not None:
                        self.recent |= self.claims.claim(self.mailbox.id, fresh)
                    self.highestmodseq = max(self.highestmodseq, modseq)
                case Expunged(uids=gone, highestmodseq=modseq):
                    self.expunged.update(u for u in gone if self.seq_of(u))
                    self.highestmodseq = max(self.highestmodseq, modseq)
                case FlagsChanged():
                    pass  # rendered by `updates`, which needs them in order
                case _:
                    pass

    def updates(self, events: list[Event], options: Options, allow_expunge: bool) -> list[bytes]:
        """The untagged responses for `events` (already absorbed) and pending expunges."""
        out: list[bytes] = []
        for event in events:
            if isinstance(event, FlagsChanged):
                out.extend(self._flag_updates(event, options))
        self.own_changes.clear()
        if allow_expunge and self.expunged:
            out.extend(self._announce_expunges(options))
        if len(self.uids) != self.announced_exists:
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            if not options.rev2:
                out.append(b"* %d RECENT\r\n" % len(self.recent))
            self.announced_exists = len(self.uids)
        return out

    def _flag_updates(self, event: FlagsChanged, options: Options) -> list[bytes]:
        out = []
        for uid, modseq, flags, keywords in event.changes:
            seq = self.seq_of(uid)
            if not seq or (uid, modseq) in self.own_changes:
                continue
            out.append(self.flags_response(seq, uid, modseq, flags, keywords, options, True))
        return out

    def flags_response(
        self,
        seq: int,
        uid: int,
        modseq: int,
        flags: Flag,
        keywords: frozenset[str],
        options: Options,
        with_uid: bool,
    ) -> bytes:
        items = [b"FLAGS " + w.flags(flags, keywords, not options.rev2 and uid in self.recent)]
        # RFC 7162 §3.2.4: with QRESYNC, unsolicited FETCH responses carry the UID.
        if with_uid or options.qresync:
            items.insert(0, b"UID %d" % uid)
        if options.condstore:
            items.append(b"MODSEQ (%d)" % modseq)
        return b"* %d FETCH (%b)\r\n" % (seq, b" ".join(items))

    def _announce_expunges(self, options: Options) -> list[bytes]:
        gone = self.expunged
        self.expunged = set()
        if options.qresync:
            # RFC 7162 §3.2.10: VANISHED replaces EXPUNGE once QRESYNC is enabled.
            out = [b"* VANISHED " + w.sequence_set(gone) + b"\r\n"]
        else:
            seqs = sorted((self.seq_of(uid) for uid in gone), reverse=True)
            # Highest first: each number stays valid after the ones announced before it.
            out = [b"* %d EXPUNGE\r\n" % seq for seq in seqs]
        self.uids = array("I", (u for u in self.uids if u not in gone))
        self.recent -= gone
        # Arrivals not yet announced stay unannounced: EXISTS still has to tell of them.
        self.announced_exists = max(0, self.announced_exists - len(gone))
        return out
