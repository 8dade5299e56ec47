"""Where an address leads: local accounts, aliases, plus-addressing, catch-all, or away
(DESIGN §4 "per-recipient routing", §7 "no open relay").

The router decides three things: whether an address is acceptable from a given origin
(relay policy), what its final destinations are (alias expansion), and whether an
authenticated account may use an address as its sender.  It reads the store only through
the `Store` protocol, so it runs unchanged on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from postoffice.config import Config
from postoffice.delivery.model import ACCEPTED, INTERNAL, Origin, Outcome, Verdict
from postoffice.store.api import Store
from postoffice.store.model import Account

# Alias chains deeper than this are a configuration mistake, not a use case; the cap keeps
# a long (loop-free) chain from turning one RCPT into unbounded store reads.
MAX_ALIAS_DEPTH: Final = 10

# LMTP is a hand-over from a trusted MTA on this host (RFC 2033 §1): mail it passes on may
# carry any sender, including our own domains (mailing lists, forwarders).
TRUSTED_LISTENERS: Final = frozenset({"lmtp", INTERNAL})

# Characters that end or split an address anywhere outside a quoted local part
# (RFC 5322 §3.2.3 specials, plus space and controls, checked separately).
_SPECIALS: Final = frozenset('()<>[]:;@\\,"')
_DOMAIN_FORBIDDEN: Final = frozenset('()<>[]:;@\\,"%!')
# Local parts that route elsewhere when an MTA interprets them: the %-hack and UUCP bang
# paths (DESIGN §7).
_ROUTING_CHARS: Final = frozenset("%!@")


class AddressError(ValueError):
    """An address this server cannot parse; str() is safe to show the client."""


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox address taken apart."""

    local: str  # unquoted: `"john.doe"` and `john.doe` are the same mailbox
    domain: str  # lower-cased; "" for the domain-less `Postmaster`
    text: str  # the address to hand on (source route removed, domain lower-cased)
    quoted: bool = False
    route: str = ""  # RFC 5321 §4.1.2 A-d-l ("@a,@b"), "" without one

    @property
    def ip_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def trailing_dot(self) -> bool:
        return self.domain.endswith(".")


def _has_control(text: str) -> bool:
    return any(ord(c) <= 0x20 or ord(c) == 0x7F for c in text)


def _unquote(quoted: str) -> str:
    # RFC 5322 §3.2.4: the quotes and the backslash of a quoted-pair are not part of it.
    chars: list[str] = []
    escaped = False
    for char in quoted:
        if escaped:
            chars.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            raise AddressError("unbalanced quote in the local part")
        elif char in "\r\n\0":
            raise AddressError("control character in the local part")
        else:
            chars.append(char)
    if escaped:
        raise AddressError("a backslash ends the local part")
    return "".join(chars)


def _check_domain(domain: str) -> None:
    if domain.startswith("["):
        if not domain.endswith("]") or _has_control(domain) or "[" in domain[1:]:
            raise AddressError("malformed address literal")
        return
    labels = domain.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()  # a trailing dot: syntax for the policy to judge, not an error
    for label in labels:
        if not label or _has_control(label) or any(c in _DOMAIN_FORBIDDEN for c in label):
            raise AddressError(f"invalid domain {domain!r}")


def parse_address(text: str) -> Address:
    """Take an address apart as given in MAIL FROM / RCPT TO (without the <>)."""
    route = ""
    rest = text
    if text.startswith("@"):
        # RFC 5321 §4.1.2: Path = "<" [ A-d-l ":" ] Mailbox ">".
        route, colon, rest = text.partition(":")
        if not colon:
            raise AddressError("source route without a mailbox")
    if "@" not in rest:
        if not rest or _has_control(rest) or any(c in _SPECIALS for c in rest):
            raise AddressError("address without a domain")
        return Address(rest, "", rest, route=route)
    local_text, _, domain = rest.rpartition("@")
    domain = domain.lower()
    if not domain:
        raise AddressError("empty domain")
    _check_domain(domain)
    quoted = len(local_text) >= 2 and local_text.startswith('"') and local_text.endswith('"')
    if quoted:
        local = _unquote(local_text[1:-1])
    else:
        local = local_text
        if not local or _has_control(local) or any(c in _SPECIALS for c in local):
            raise AddressError("invalid local part")
    if not local:
        raise AddressError("empty local part")
    return Address(local, domain, f"{local_text}@{domain}", quoted, route)


def _relay_form(address: Address) -> str | None:
    """Why an unauthenticated client may not use this address form, or None (DESIGN §7)."""
    if address.route:
        return "source routes are not accepted"
    if address.ip_literal:
        return "address literals are not accepted"
    if address.trailing_dot:
        return "a domain ending in a dot is not accepted"
    if any(c in _ROUTING_CHARS for c in address.local):
        return "%, ! and @ in a local part are not accepted"
    return None


@dataclass(frozen=True, slots=True)
class LocalDestination:
    account: Account
    delivered_to: str  # the address as it reached the account, for Delivered-To


@dataclass(frozen=True, slots=True)
class Route:
    """An address resolved: a verdict and, when accepted, where copies go."""

    verdict: Verdict
    local: tuple[LocalDestination, ...] = ()
    remote: tuple[str, ...] = ()


@dataclass(slots=True)
class _Expansion:
    catch_all: bool
    local: dict[int, LocalDestination] = field(default_factory=dict)
    remote: dict[str, None] = field(default_factory=dict)  # ordered set
    seen: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def route(self) -> Route:
        if not self.local and not self.remote:
            detail = "; ".join(dict.fromkeys(self.problems)) or "no such user here"
            return Route(Verdict(Outcome.UNKNOWN_USER, detail))
        return Route(ACCEPTED, tuple(self.local.values()), tuple(self.remote))


class Router:
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.delimiter = config.smtp.recipient_delimiter
        self.hostname = config.server.hostname

    # -- recipients ------------------------------------------------------------------------
    async def route(self, text: str, origin: Origin) -> Route:
        """Resolve a recipient, applying the relay policy for `origin`."""
        try:
            address = parse_address(text)
        except AddressError as exc:
            return Route(Verdict(Outcome.BAD_ADDRESS, str(exc)))
        trusted = origin.account_id is not None or origin.listener == INTERNAL
        if not trusted:
            refused = _relay_form(address)
            if refused is not None:
                return Route(Verdict(Outcome.RELAY_DENIED, refused))
        if not address.domain:
            return await self._route_domainless(address)
        if address.trailing_dot:
            return Route(Verdict(Outcome.BAD_ADDRESS, "a domain ending in a dot is ambiguous"))
        if address.ip_literal or not await self.store.is_local_domain(address.domain):
            if not trusted:
                return Route(Verdict(Outcome.RELAY_DENIED, "relaying denied"))
            # RFC 5321 §4.1.1.3: servers SHOULD ignore a source route; the mailbox alone counts.
            return Route(ACCEPTED, remote=(address.text,))
        expansion = _Expansion(catch_all=True)
        await self._expand(address, 0, expansion)
        return expansion.route()

    async def _route_domainless(self, address: Address) -> Route:
        # RFC 5321 §4.5.1: RCPT TO:<Postmaster> without a domain must be accepted; it goes
        # to the postmaster of this host's own domain (or of the closest parent we serve).
        if address.local.lower() != "postmaster":
            return Route(Verdict(Outcome.BAD_ADDRESS, "an address needs a domain"))
        labels = self.hostname.split(".")
        for start in range(len(labels) - 1 or 1):
            domain = ".".join(labels[start:])
            if await self.store.is_local_domain(domain):
                expansion = _Expansion(catch_all=True)
                await self._expand(parse_address(f"postmaster@{domain}"), 0, expansion)
                return expansion.route()
        return Route(Verdict(Outcome.UNKNOWN_USER, "no postmaster for this host"))

    async def _expand(self, address: Address, depth: int, out: _Expansion) -> None:
        """Add the final destinations of a local-domain address to `out`."""
        key = f"{address.local}@{address.domain}".lower()
        if key in out.seen:
            # A loop, or a second path to an address already expanded: nothing new here.
            out.problems.append("alias loop")
            return
        out.seen.add(key)
        if depth > MAX_ALIAS_DEPTH:
            out.problems.append("aliases nested too deeply")
            return
        # The address itself first; `user+tag` falls back to `user` only when it is neither
        # an account nor an alias of its own.
        candidates = [(address.local, "")]
        base, delimiter, tag = (
            address.local.partition(self.delimiter) if self.delimiter else ("", "", "")
        )
        if delimiter and base:
            candidates.append((base, f"{delimiter}{tag}"))
        for local, extension in candidates:
            name = f"{local}@{address.domain}"
            account = await self.store.get_account(name)
            if account is not None:
                own_local, _, own_domain = account.address.rpartition("@")
                delivered_to = f"{own_local}{extension}@{own_domain}"
                out.local.setdefault(account.id, LocalDestination(account, delivered_to))
                return
            alias = await self.store.get_alias(name)
            if alias is not None:
                await self._expand_targets(alias.targets, depth, out)
                return
        catch_all = f"@{address.domain}"
        if out.catch_all and catch_all not in out.seen:
            out.seen.add(catch_all)
            alias = await self.store.get_alias(catch_all)
            if alias is not None:
                await self._expand_targets(alias.targets, depth, out)

    async def _expand_targets(self, targets: tuple[str, ...], depth: int, out: _Expansion) -> None:
        # Alias targets are the administrator's: no relay policy, remote targets allowed.
        for target in targets:
            try:
                address = parse_address(target)
            except AddressError:
                # The detail reaches the client: say what is wrong, not what the alias holds.
                out.problems.append("bad alias target")
                continue
            if not address.domain or address.trailing_dot:
                out.problems.append("bad alias target")
            elif address.ip_literal or not await self.store.is_local_domain(address.domain):
                out.remote.setdefault(address.text)
            else:
                await self._expand(address, depth + 1, out)

    # -- senders ---------------------------------------------------------------------------
    async def owns(self, account_id: int, text: str) -> bool:
        """Whether the account may send as `text`: its own address (also plus-addressed),
        or an alias that delivers to it.  A catch-all never makes an address anyone's."""
        try:
            address = parse_address(text)
        except AddressError:
            return False
        if (
            not address.domain
            or address.ip_literal
            or address.trailing_dot
            or not await self.store.is_local_domain(address.domain)
        ):
            return False
        expansion = _Expansion(catch_all=False)
        await self._expand(address, 0, expansion)
        return account_id in expansion.local

    async def check_sender(self, sender: str, origin: Origin) -> Verdict:
        """The MAIL FROM policy (DESIGN §7; issue 3 items 3 and 4)."""
        if origin.account_id is not None:
            if not sender:
                return Verdict(
                    Outcome.SENDER_NOT_OWNED, "submission needs a sender address of yours"
                )
            if await self.owns(origin.account_id, sender):
                return ACCEPTED
            return Verdict(Outcome.SENDER_NOT_OWNED, f"{sender} is not one of your addresses")
        if not sender:
            # RFC 5321 §4.5.5: the null reverse-path of bounces must be accepted.
            return ACCEPTED
        try:
            address = parse_address(sender)
        except AddressError as exc:
            return Verdict(Outcome.BAD_ADDRESS, str(exc))
        if origin.listener in TRUSTED_LISTENERS or address.ip_literal or not address.domain:
            return ACCEPTED
        # A trailing dot names the same domain in DNS; strict here means refusing it too.
        domain = address.domain.removesuffix(".")
        if await self.store.is_local_domain(domain):
            return Verdict(Outcome.SENDER_FORGED, f"{domain} is ours: log in to send from {sender}")
        return ACCEPTED
