"""The `postoffice` command: set up a data folder, manage domains, users and aliases, serve,
look after the outbound queue and DKIM keys.

Black-box tests outside this repository depend on the commands and options exactly as they
are here.  Every error is one line on stderr, `postoffice: error: ...`, with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime as dt
import re
import secrets
import shutil
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn, TypeVar

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from postoffice import __version__, server
from postoffice.auth.passwords import hash_password, scram_sha256_record
from postoffice.config import (
    CONFIG_FILE,
    LISTENER_NAMES,
    UNIX_CAPABLE,
    Config,
    ConfigError,
    ListenAddress,
    format_size,
    load_config,
    parse_hostname,
    parse_listen_address,
    parse_size,
    write_default_config,
)
from postoffice.context import open_configured_store
from postoffice.filters.junk.training import train_messages, train_raw
from postoffice.filters.sieve import SieveError, check_script
from postoffice.listeners import ListenError
from postoffice.log import FORMATS, configure_logging
from postoffice.queue.dkim import DkimKey, find_key, generate_key, txt_record
from postoffice.store import Store
from postoffice.store.api import JunkTotals, QueuedMessage, ScriptActive
from postoffice.store.model import PopAccountPolicy, StoreError
from postoffice.tls import TlsConfigError, generate_self_signed
from postoffice.web import autoconfig

T = TypeVar("T")

DEFAULT_DATA = "postoffice-data"
GENERATED_PASSWORD_BYTES = 18  # 24 URL-safe characters, 144 bits


class CliError(click.ClickException):
    """A user error: printed as one line, exit status 1."""


# -- addresses ----------------------------------------------------------------------------------

# RFC 5322 §3.2.3 atext, plus UTF-8 (RFC 6531).  Quoted local parts are refused on purpose
# (DESIGN §7): they are how relay tricks are smuggled in, and no real mailbox needs them.
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+")


def normalise_domain(text: str) -> str:
    """Lower-case ASCII (A-label) form of a domain; raises CliError."""
    try:
        ascii_form = text.strip().rstrip(".").encode("idna").decode("ascii")
        return parse_hostname(ascii_form)
    except (UnicodeError, ValueError):
        raise CliError(f"invalid domain {text!r}") from None


def normalise_address(text: str) -> str:
    """`local@domain` with the domain normalised; the local part keeps its case."""
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise CliError(f"invalid address {text!r}: expected user@domain")
    # RFC 5321 §4.5.3.1.1: a local part is at most 64 octets.
    if len(local.encode()) > 64 or not all(_ATOM.fullmatch(a) for a in local.split(".")):
        raise CliError(f"invalid address {text!r}: malformed local part")
    try:
        return f"{local}@{normalise_domain(domain)}"
    except CliError:
        raise CliError(f"invalid address {text!r}: malformed domain") from None


def normalise_alias(text: str) -> str:
    """An alias address: `user@domain`, or `@domain` for the domain's catch-all."""
    if text.startswith("@"):
        return "@" + normalise_domain(text[1:])
    return normalise_address(text)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


# -- option parsing -----------------------------------------------------------------------------


def parse_quota(text: str) -> int | None:
    """Bytes, or None (unlimited) for "none" or "0"."""
    if text.strip().lower() in ("none", "0"):
        return None
    try:
        return parse_size(text)
    except ValueError as e:
        raise CliError(str(e)) from None


def _quota_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    return None if value is None else parse_quota(value)


def _read_password(password: str | None, from_stdin: bool) -> str | None:
    """The password given, or None when the caller should generate one."""
    if password is not None and from_stdin:
        raise CliError("give either --password or --password-stdin, not both")
    if from_stdin:
        if sys.stdin is None:
            raise CliError("--password-stdin given but there is no standard input")
        # One line; only the line end is stripped, spaces may be part of the password.
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CliError("no password on standard input")
    elif password == "":
        raise CliError("the password must not be empty")
    return password


def _credentials(password: str) -> tuple[str, str | None]:
    try:
        scram = scram_sha256_record(password)
    except ValueError as e:
        # Still usable with PLAIN/LOGIN, so not an error.
        click.echo(f"postoffice: warning: {e}; SCRAM-SHA-256 logins will fail", err=True)
        scram = None
    return hash_password(password), scram


def _format_quota(quota: int | None) -> str:
    return "unlimited" if quota is None else format_size(quota)


# -- data folder and store ----------------------------------------------------------------------


def _data_dir(ctx: click.Context) -> Path:
    data = ctx.find_root().params["data"]
    assert isinstance(data, Path)
    return data


def _load(data: Path) -> Config:
    if not data.is_dir():
        raise CliError(
            f"data folder {data} does not exist; create it with: "
            f"postoffice --data {data} init --domain DOMAIN"
        )
    try:
        return load_config(data)
    except FileNotFoundError:
        raise CliError(
            f"{data} is not initialised (no {CONFIG_FILE}); run: "
            f"postoffice --data {data} init --domain DOMAIN"
        ) from None
    except ConfigError as e:
        raise CliError(str(e)) from None


def _with_store(data: Path, operation: Callable[[Store], Awaitable[T]]) -> T:
    """Run one store operation for a command; store errors become CLI errors."""
    config = _load(data)

    async def run() -> T:
        store = await open_configured_store(data, config)
        try:
            return await operation(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreError as e:
        raise CliError(str(e)) from None


async def _require_domain(store: Store, domain: str) -> None:
    if not await store.is_local_domain(domain):
        raise CliError(f"unknown domain {domain} (add it with: postoffice domain add {domain})")


# -- commands -----------------------------------------------------------------------------------


# no_args_is_help=False on every group: a missing command is a one-line error with a hint,
# not a help page on stderr.
@click.group(context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=False)
@click.option(
    "--data",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="POSTOFFICE_DATA",
    default=DEFAULT_DATA,
    show_default=True,
    show_envvar=True,
    help="Data folder: config, store, TLS files.",
)
@click.version_option(__version__, prog_name="postoffice")
def cli(data: Path) -> None:
    """postoffice: a complete mail server in one process."""


@cli.command()
@click.option("--domain", required=True, help="First local mail domain, e.g. example.com.")
@click.option("--hostname", help="This server's host name; default mail.DOMAIN.")
@click.pass_context
def init(ctx: click.Context, domain: str, hostname: str | None) -> None:
    """Create the data folder: config, self-signed TLS certificate and store."""
    data = _data_dir(ctx)
    domain = normalise_domain(domain)
    host = normalise_domain(hostname) if hostname is not None else f"mail.{domain}"
    if (data / CONFIG_FILE).exists():
        raise CliError(f"{data} is already initialised ({CONFIG_FILE} exists)")
    if data.exists() and any(data.iterdir()):
        raise CliError(f"{data} is not empty; init needs a new or empty folder")
    created = not data.exists()
    # Mail and keys live here: nobody else may read them.
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        defaults = Config()
        cert, key = defaults.tls.paths(data)
        generate_self_signed(host, cert, key)
        asyncio.run(_init_store(data, defaults, domain))
        # Last, so that a folder is "initialised" only once everything else is in place.
        write_default_config(data / CONFIG_FILE, domain, host)
    except BaseException:
        # The folder was new or empty: leave it so, and a second init can simply run again.
        for child in data.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        if created:
            data.rmdir()
        raise
    click.echo(f"initialised {data} for {domain} (host name {host})")


async def _init_store(data: Path, config: Config, domain: str) -> None:
    store = await open_configured_store(data, config)
    try:
        await store.add_domain(domain)
    finally:
        await store.close()


@cli.group(no_args_is_help=False)
def domain() -> None:
    """Local mail domains."""


@domain.command("add")
@click.argument("name")
@click.pass_context
def domain_add(ctx: click.Context, name: str) -> None:
    """Accept mail for NAME."""
    name = normalise_domain(name)
    _with_store(_data_dir(ctx), lambda store: store.add_domain(name))
    click.echo(f"added domain {name}")


@domain.command("remove")
@click.argument("name")
@click.pass_context
def domain_remove(ctx: click.Context, name: str) -> None:
    """Stop accepting mail for NAME."""
    name = normalise_domain(name)
    _with_store(_data_dir(ctx), lambda store: store.remove_domain(name))
    click.echo(f"removed domain {name}")


@domain.command("list")
@click.pass_context
def domain_list(ctx: click.Context) -> None:
    """One local domain per line."""
    for name in _with_store(_data_dir(ctx), lambda store: store.list_domains()):
        click.echo(name)


@cli.group(no_args_is_help=False)
def user() -> None:
    """Accounts (mailboxes that can log in)."""


_password = click.option("--password", help="The password (visible to other local users).")
_password_stdin = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)


@user.command("add")
@click.argument("address")
@_password
@_password_stdin
@click.option(
    "--quota",
    callback=_quota_option,
    metavar="SIZE",
    help='Storage quota like 1G or 500M; "none" or 0 for unlimited (the default).',
)
@click.pass_context
def user_add(
    ctx: click.Context,
    address: str,
    password: str | None,
    password_stdin: bool,
    quota: int | None,
) -> None:
    """Create an account; without a password option a random one is printed once."""
    address = normalise_address(address)
    given = _read_password(password, password_stdin)
    secret = given if given is not None else secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
    password_hash, scram = _credentials(secret)

    async def add(store: Store) -> None:
        await _require_domain(store, domain_of(address))
        await store.add_account(address, password_hash, scram, quota_bytes=quota)

    _with_store(_data_dir(ctx), add)
    click.echo(f"added user {address}")
    if given is None:
        click.echo(f"generated password (shown only once): {secret}")


@user.command("passwd")
@click.argument("address")
@_password
@_password_stdin
@click.pass_context
def user_passwd(
    ctx: click.Context, address: str, password: str | None, password_stdin: bool
) -> None:
    """Set a new password; without a password option a random one is printed once."""
    address = normalise_address(address)
    given = _read_password(password, password_stdin)
    secret = given if given is not None else secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
    password_hash, scram = _credentials(secret)
    _with_store(_data_dir(ctx), lambda store: store.set_password(address, password_hash, scram))
    click.echo(f"changed password of {address}")
    if given is None:
        click.echo(f"generated password (shown only once): {secret}")


@user.command("remove")
@click.argument("address")
@click.pass_context
def user_remove(ctx: click.Context, address: str) -> None:
    """Delete an account and all its mail."""
    address = normalise_address(address)
    _with_store(_data_dir(ctx), lambda store: store.remove_account(address))
    click.echo(f"removed user {address}")


@user.command("list")
@click.pass_context
def user_list(ctx: click.Context) -> None:
    """One account per line: address, messages, bytes used, quota."""
    for account in _with_store(_data_dir(ctx), lambda store: store.list_accounts()):
        click.echo(
            f"{account.address}  messages={account.used_messages}"
            f"  used={format_size(account.used_bytes)}  quota={_format_quota(account.quota_bytes)}"
        )


@user.command("quota")
@click.argument("address")
@click.argument("size")
@click.pass_context
def user_quota(ctx: click.Context, address: str, size: str) -> None:
    """Set the storage quota: SIZE like 1G or 500M; "none" or 0 for unlimited."""
    address = normalise_address(address)
    quota = parse_quota(size)

    async def set_quota(store: Store) -> None:
        account = await store.get_account(address)
        if account is None:
            raise CliError(f"no such user {address}")
        await store.set_quota(address, quota, account.quota_messages)

    _with_store(_data_dir(ctx), set_quota)
    click.echo(f"quota of {address}: {_format_quota(quota)}")


def _expire_days(text: str) -> int | None:
    """--expire: days (0 deletes what was downloaded at QUIT), or None for "never"."""
    if text.strip().lower() == "never":
        return None
    if not text.strip().isdigit():
        raise CliError(f'--expire takes a number of days or "never", not {text!r}')
    return int(text)


def _format_pop(policy: PopAccountPolicy) -> str:
    expire = "never" if policy.expire_days is None else f"{policy.expire_days}d"
    return (
        f"pop3 of {policy.address}: {'enabled' if policy.enabled else 'disabled'}"
        f"  login-delay={policy.login_delay}s  expire={expire}"
        f"  apop={'on' if policy.apop_secret is not None else 'off'}"
    )


@user.command("pop")
@click.argument("address")
@click.option("--enable/--disable", "enabled", default=None, help="Allow or refuse POP3 logins.")
@click.option(
    "--login-delay",
    type=click.IntRange(min=0),
    metavar="SECONDS",
    help="Minimum time between two POP3 logins (RFC 2449 LOGIN-DELAY); 0 for none.",
)
@click.option(
    "--expire",
    metavar="DAYS|never",
    help="Delete messages DAYS days after their first download; 0: at the end of that "
    'session; "never" (the default) keeps them.',
)
@click.option(
    "--apop-secret-stdin/--no-apop",
    "apop",
    default=None,
    help="Enable APOP with a secret read from the first line of stdin (stored retrievably, "
    "unlike passwords), or disable APOP.",
)
@click.pass_context
def user_pop(
    ctx: click.Context,
    address: str,
    enabled: bool | None,
    login_delay: int | None,
    expire: str | None,
    apop: bool | None,
) -> None:
    """Show or change the account's POP3 policy."""
    address = normalise_address(address)
    expire_days = None if expire is None else _expire_days(expire)
    secret: str | None = None
    if apop:
        secret = _read_password(None, from_stdin=True)

    async def update(store: Store) -> PopAccountPolicy:
        current = await store.get_pop_policy(address)
        if current is None:
            raise CliError(f"no such user {address}")
        return await store.set_pop_policy(
            address,
            enabled=current.enabled if enabled is None else enabled,
            login_delay=current.login_delay if login_delay is None else login_delay,
            expire_days=current.expire_days if expire is None else expire_days,
            apop_secret=current.apop_secret if apop is None else secret,
        )

    click.echo(_format_pop(_with_store(_data_dir(ctx), update)))


@cli.group(no_args_is_help=False)
def alias() -> None:
    """Addresses that forward to others (@domain: catch-all)."""


@alias.command("add")
@click.argument("address")
@click.argument("targets", nargs=-1, required=True)
@click.pass_context
def alias_add(ctx: click.Context, address: str, targets: tuple[str, ...]) -> None:
    """Deliver mail for ADDRESS to every TARGET (local or remote addresses)."""
    address = normalise_alias(address)
    normalised = [normalise_address(t) for t in targets]

    async def add(store: Store) -> None:
        await _require_domain(store, domain_of(address))
        await store.add_alias(address, normalised)

    _with_store(_data_dir(ctx), add)
    click.echo(f"added alias {address} -> {', '.join(normalised)}")


@alias.command("remove")
@click.argument("address")
@click.pass_context
def alias_remove(ctx: click.Context, address: str) -> None:
    """Delete an alias."""
    address = normalise_alias(address)
    _with_store(_data_dir(ctx), lambda store: store.remove_alias(address))
    click.echo(f"removed alias {address}")


@alias.command("list")
@click.pass_context
def alias_list(ctx: click.Context) -> None:
    """One alias per line: address -> targets."""
    for entry in _with_store(_data_dir(ctx), lambda store: store.list_aliases()):
        click.echo(f"{entry.address} -> {', '.join(entry.targets)}")


def _parse_listen(item: str) -> tuple[str, ListenAddress | None]:
    name, eq, value = item.partition("=")
    if not eq:
        raise CliError(f"--listen {item}: expected NAME=HOST:PORT or NAME=off")
    try:
        return name, parse_listen_address(value, allow_unix=name in UNIX_CAPABLE)
    except ValueError as e:
        raise CliError(f"--listen {item}: {e}") from None


@cli.command()
@click.option(
    "--listen",
    "listens",
    multiple=True,
    metavar="NAME=HOST:PORT|NAME=off",
    help="Move a listener or turn it off (repeatable); overrides the config file.",
)
@click.option("--workers", type=click.IntRange(1, 256), help="Processes to run (default: config).")
@click.option("--log-format", type=click.Choice(FORMATS), help="Log line format (default: config).")
@click.pass_context
def serve(
    ctx: click.Context, listens: tuple[str, ...], workers: int | None, log_format: str | None
) -> int:
    """Run every listener until SIGTERM."""
    data = _data_dir(ctx)
    config = _load(data)
    try:
        config = config.with_listeners(dict(_parse_listen(item) for item in listens))
    except ValueError as e:
        raise CliError(f"--listen: {e}") from None
    if workers is not None:
        config = dataclasses.replace(
            config, server=dataclasses.replace(config.server, workers=workers)
        )
    if log_format is not None:
        config = dataclasses.replace(config, log=dataclasses.replace(config.log, format=log_format))
    configure_logging(config.log.format, config.log.level)
    try:
        return server.serve(data, config, server.default_registry())
    except (TlsConfigError, ListenError) as e:
        raise CliError(str(e)) from None


@cli.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Listeners and what the store holds."""
    data = _data_dir(ctx)
    config = _load(data)
    counts = _with_store(data, lambda store: store.counts())
    registry = server.default_registry()
    lines = [f"data folder: {data.absolute()}", f"host name: {config.server.hostname}"]
    lines.append("listeners:")
    enabled = {listener.name: listener for listener in config.enabled_listeners()}
    for name in LISTENER_NAMES:
        listener = enabled.get(name)
        if listener is None:
            state = "off"
        else:
            tls = " (implicit TLS)" if listener.implicit_tls else ""
            built = "built" if name in registry else "not built yet"
            state = f"{listener.address}{tls}  {built}"
        lines.append(f"  {name:<12} {state}")
    lines += [
        f"domains: {counts['domains']}",
        f"users: {counts['accounts']}",
        f"aliases: {counts['aliases']}",
        f"mailboxes: {counts['mailboxes']}",
        f"messages: {counts['messages']} ({counts['entries']} mailbox entries)",
        f"store size: {counts['blob_bytes'] + counts['db_bytes']} bytes"
        f" (metadata {counts['db_bytes']}, messages {counts['blob_bytes']})",
    ]
    click.echo("\n".join(lines))


# -- outbound queue and DKIM (issue 7) ---------------------------------------------------------


@cli.group(no_args_is_help=False)
def queue() -> None:
    """Outbound mail waiting for remote delivery."""


def _stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _queue_line(message: QueuedMessage) -> str:
    states = collections.Counter(r.state.value for r in message.recipients)
    summary = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    due = min((r.next_attempt for r in message.recipients), default=message.created)
    return (
        f"{message.id}  {message.size}  {_stamp(message.created)}  "
        f"<{message.envelope.sender}>  {summary}  next {_stamp(due)}"
    )


@queue.command("list")
@click.pass_context
def queue_list(ctx: click.Context) -> None:
    """One message per line: id, size, arrival, sender, recipients by state, next attempt."""
    messages = _with_store(
        _data_dir(ctx), lambda store: store.outbound.list(state=None, limit=1_000_000)
    )
    for message in messages:
        click.echo(_queue_line(message))


@queue.command("show")
@click.argument("message_id", type=int)
@click.pass_context
def queue_show(ctx: click.Context, message_id: int) -> None:
    """A queued message's envelope and each recipient's attempts."""
    message = _with_store(_data_dir(ctx), lambda store: store.outbound.get(message_id))
    if message is None:
        raise CliError(f"no queued message {message_id}")
    envelope = message.envelope
    lines = [
        f"id: {message.id}",
        f"sender: <{envelope.sender}>",
        f"size: {message.size}",
        f"arrived: {_stamp(message.created)}",
        f"session: {message.origin_session}",
    ]
    if envelope.envid:
        lines.append(f"envid: {envelope.envid}")
    for r in message.recipients:
        lines.append(
            f"recipient: <{r.recipient.address}>  {r.state.value}  attempts {r.attempts}"
            f"  next {_stamp(r.next_attempt)}"
        )
        lines.extend(f"  {entry}" for entry in r.log)
    click.echo("\n".join(lines))


def _queue_change(
    ctx: click.Context, message_id: int, change: Callable[[Store], Awaitable[int]], done: str
) -> None:
    async def run(store: Store) -> int | None:
        if await store.outbound.get(message_id) is None:
            return None
        return await change(store)

    count = _with_store(_data_dir(ctx), run)
    if count is None:
        raise CliError(f"no queued message {message_id}")
    click.echo(f"{done} {count} recipient(s) of message {message_id}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@queue.command("retry")
@click.argument("message_id", type=int)
@click.pass_context
def queue_retry(ctx: click.Context, message_id: int) -> None:
    """Make a message's pending recipients due now."""
    _queue_change(
        ctx, message_id, lambda store: store.outbound.retry_now(message_id, _now()), "retrying"
    )


@queue.command("hold")
@click.argument("message_id", type=int)
@click.pass_context
def queue_hold(ctx: click.Context, message_id: int) -> None:
    """Keep a message from being delivered until it is released."""
    _queue_change(ctx, message_id, lambda store: store.outbound.hold(message_id), "held")


@queue.command("release")
@click.argument("message_id", type=int)
@click.pass_context
def queue_release(ctx: click.Context, message_id: int) -> None:
    """Let a held message be delivered again, now."""
    _queue_change(
        ctx, message_id, lambda store: store.outbound.release(message_id, _now()), "released"
    )


@queue.command("remove")
@click.argument("message_id", type=int)
@click.pass_context
def queue_remove(ctx: click.Context, message_id: int) -> None:
    """Delete a message from the queue without a bounce."""
    if not _with_store(_data_dir(ctx), lambda store: store.outbound.remove(message_id)):
        raise CliError(f"no queued message {message_id}")
    click.echo(f"removed message {message_id}")


@queue.command("flush")
@click.pass_context
def queue_flush(ctx: click.Context) -> None:
    """Make every pending recipient due now; the running server tries them at once."""
    count = _with_store(_data_dir(ctx), lambda store: store.outbound.retry_now(None, _now()))
    click.echo(f"retrying {count} recipient(s)")


@cli.group(no_args_is_help=False)
def dkim() -> None:
    """DKIM signing keys for outbound mail."""


def _txt_strings(value: str) -> str:
    # RFC 1035 §3.3: one character-string holds at most 255 octets; a 2048-bit RSA key
    # needs two, which DNS joins back together (RFC 6376 §3.6.2.2).
    parts = [value[i : i + 255] for i in range(0, len(value), 255)]
    return " ".join(f'"{part}"' for part in parts)


@dkim.command("generate")
@click.argument("domain_name", metavar="DOMAIN")
@click.option("--selector", default="mail", show_default=True, help="DKIM selector (s=).")
@click.option(
    "--algorithm",
    type=click.Choice(["rsa", "ed25519"]),
    default="rsa",
    show_default=True,
    help="rsa (2048 bits) is verified everywhere; ed25519 (RFC 8463) not yet by all.",
)
@click.pass_context
def dkim_generate(ctx: click.Context, domain_name: str, selector: str, algorithm: str) -> None:
    """Create a signing key for DOMAIN and print the DNS TXT record to publish."""
    data = _data_dir(ctx)
    name = normalise_domain(domain_name)
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", selector.lower()):
        raise CliError(f"invalid selector {selector!r}: one DNS label, letters, digits and -")
    _with_store(data, lambda store: _require_domain(store, name))
    try:
        record = generate_key(
            data, name, selector.lower(), "ed25519" if algorithm == "ed25519" else "rsa"
        )
    except FileExistsError:
        raise CliError(f"a key for {name} with selector {selector} exists already") from None
    click.echo(f"{selector.lower()}._domainkey.{name}. IN TXT ( {_txt_strings(record)} )")


# -- DNS records (issue 9) -----------------------------------------------------------------------


@cli.group(no_args_is_help=False)
def dns() -> None:
    """The DNS records a mail domain needs."""


def _dkim_public_record(key: DkimKey) -> str:
    """The TXT value for an existing key (the same `dkim generate` printed)."""
    if key.algorithm == "ed25519":
        seed = base64.b64decode(key.private)
        public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        private = serialization.load_pem_private_key(key.private, password=None)
        raw = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return txt_record(key.algorithm, raw)


@dns.command("records")
@click.argument("domain_name", metavar="DOMAIN")
@click.pass_context
def dns_records(ctx: click.Context, domain_name: str) -> None:
    """Print, as zone-file lines, every record DOMAIN needs: MX, SPF, DKIM, DMARC, the
    autoconfig/autodiscover CNAMEs and the SRV records of RFC 6186 and RFC 8314."""
    data = _data_dir(ctx)
    config = _load(data)
    name = normalise_domain(domain_name)
    _with_store(data, lambda store: _require_domain(store, name))
    key = find_key(data, name)
    dkim_line = None
    if key is not None:
        record = _txt_strings(_dkim_public_record(key))
        dkim_line = f"{key.selector}._domainkey.{name}. IN TXT ( {record} )"
    click.echo("\n".join(autoconfig.dns_records(config, name, dkim_line)))


@cli.group(no_args_is_help=False)
def sieve() -> None:
    """Users' Sieve scripts (what ManageSieve clients manage), for the admin."""


async def _account_id(store: Store, address: str) -> int:
    account = await store.get_account(address)
    if account is None:
        raise CliError(f"no such user {address}")
    return account.id


@sieve.command("list")
@click.argument("address", metavar="USER")
@click.pass_context
def sieve_list(ctx: click.Context, address: str) -> None:
    """The user's scripts by name; the one that runs is marked active."""
    address = normalise_address(address)

    async def run(store: Store) -> list[tuple[str, bool]]:
        return await store.sieve.list(await _account_id(store, address))

    for name, active in _with_store(_data_dir(ctx), run):
        click.echo(f"{name}  active" if active else name)


@sieve.command("get")
@click.argument("address", metavar="USER")
@click.argument("name")
@click.pass_context
def sieve_get(ctx: click.Context, address: str, name: str) -> None:
    """Print one script."""
    address = normalise_address(address)

    async def run(store: Store) -> str | None:
        return await store.sieve.get(await _account_id(store, address), name)

    content = _with_store(_data_dir(ctx), run)
    if content is None:
        raise CliError(f"{address} has no script {name!r}")
    click.echo(content, nl=False)


@sieve.command("put")
@click.argument("address", metavar="USER")
@click.argument("name")
@click.argument("source", metavar="FILE|-", type=click.File("rb"))
@click.pass_context
def sieve_put(ctx: click.Context, address: str, name: str, source: BinaryIO) -> None:
    """Store a script (replacing one of that name) once it is checked; `-` reads stdin."""
    address = normalise_address(address)
    data = _data_dir(ctx)
    limits = _load(data).sieve
    raw = source.read(limits.max_script_size + 1)
    if len(raw) > limits.max_script_size:
        raise CliError(f"script too large: at most {format_size(limits.max_script_size)}")
    try:
        text = raw.decode()
        check_script(text)
    except UnicodeDecodeError:
        raise CliError("invalid script: not UTF-8") from None
    except SieveError as e:
        raise CliError(f"invalid script: {e}") from None

    async def run(store: Store) -> None:
        account_id = await _account_id(store, address)
        names = {existing for existing, _ in await store.sieve.list(account_id)}
        if name not in names and len(names) >= limits.max_scripts:
            raise CliError(f"{address} already has {len(names)} scripts, the most allowed")
        await store.sieve.put(account_id, name, text)

    _with_store(data, run)
    click.echo(f"stored script {name!r} for {address}")


@sieve.command("activate")
@click.argument("address", metavar="USER")
@click.argument("name")
@click.pass_context
def sieve_activate(ctx: click.Context, address: str, name: str) -> None:
    """Make NAME the script that runs on the user's incoming mail."""
    address = normalise_address(address)

    async def run(store: Store) -> None:
        await store.sieve.activate(await _account_id(store, address), name)

    _with_store(_data_dir(ctx), run)
    click.echo(f"activated script {name!r} for {address}")


@sieve.command("deactivate")
@click.argument("address", metavar="USER")
@click.pass_context
def sieve_deactivate(ctx: click.Context, address: str) -> None:
    """Run no script on the user's mail (the scripts are kept)."""
    address = normalise_address(address)

    async def run(store: Store) -> None:
        await store.sieve.activate(await _account_id(store, address), None)

    _with_store(_data_dir(ctx), run)
    click.echo(f"no active script for {address}")


@sieve.command("remove")
@click.argument("address", metavar="USER")
@click.argument("name")
@click.pass_context
def sieve_remove(ctx: click.Context, address: str, name: str) -> None:
    """Delete a script; the active one must be deactivated first."""
    address = normalise_address(address)

    async def run(store: Store) -> None:
        try:
            await store.sieve.delete(await _account_id(store, address), name)
        except ScriptActive:
            raise CliError(
                f"script {name!r} is active; first run: postoffice sieve deactivate {address}"
            ) from None

    _with_store(_data_dir(ctx), run)
    click.echo(f"removed script {name!r} of {address}")


# -- junk mail classifier (issue 8) -------------------------------------------------------------


@cli.group(no_args_is_help=False)
def junk() -> None:
    """Each user's junk mail classifier: train it, see its counts, set its threshold."""


def _message_files(path: Path) -> list[Path]:
    """A message file, or every file under a folder (a maildir's cur/ and new/ included)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path]


@junk.command("train")
@click.option("--spam/--ham", "spam", required=True, help="Train the messages as spam or as ham.")
@click.argument("address", metavar="USER")
@click.argument("sources", nargs=-1, metavar="[FILES|MAILBOX]...")
@click.pass_context
def junk_train(ctx: click.Context, spam: bool, address: str, sources: tuple[str, ...]) -> None:
    """Teach USER's classifier with message files, folders of them (one message per file),
    or a mailbox of USER by name (an existing path is taken as a file); without any, one
    message from stdin.  A message already trained the same way counts once."""
    address = normalise_address(address)
    files = [f for s in sources if Path(s).exists() for f in _message_files(Path(s))]
    mailboxes = [s for s in sources if not Path(s).exists()]
    raws = [f.read_bytes() for f in files] if sources else [sys.stdin.buffer.read()]

    async def run(store: Store) -> tuple[int, int]:
        account_id = await _account_id(store, address)
        seen = len(raws)
        changed = await train_raw(store, account_id, raws, spam) if raws else 0
        for name in mailboxes:
            mailbox = await store.get_mailbox(account_id, name)
            if mailbox is None:
                raise CliError(f"no file or mailbox {name!r} of {address}")
            uids = list(await store.uids(mailbox.id))
            seen += len(uids)
            changed += await train_messages(store, account_id, mailbox.id, uids, spam)
        return seen, changed

    seen, changed = _with_store(_data_dir(ctx), run)
    kind = "spam" if spam else "ham"
    click.echo(f"trained {changed} of {seen} message(s) as {kind} for {address}")


@junk.command("stats")
@click.argument("address", metavar="USER")
@click.pass_context
def junk_stats(ctx: click.Context, address: str) -> None:
    """How much USER's classifier has learnt, and its threshold."""
    address = normalise_address(address)
    data = _data_dir(ctx)
    config = _load(data).junk

    async def run(store: Store) -> tuple[JunkTotals, int]:
        account_id = await _account_id(store, address)
        return await store.junk.totals(account_id), await store.junk.token_count(account_id)

    totals, tokens = _with_store(data, run)
    ready = min(totals.spam, totals.ham) >= config.min_trained
    own = totals.threshold is not None
    threshold = totals.threshold if totals.threshold is not None else config.threshold
    click.echo(f"spam messages: {totals.spam}")
    click.echo(f"ham messages: {totals.ham}")
    click.echo(f"tokens: {tokens}")
    click.echo(f"threshold: {threshold:.2f}{'' if own else ' (default)'}")
    click.echo(
        "classifying: yes" if ready else f"classifying: no ({config.min_trained} of each needed)"
    )


@junk.command("threshold")
@click.argument("address", metavar="USER")
@click.argument("value")
@click.pass_context
def junk_threshold(ctx: click.Context, address: str, value: str) -> None:
    """Set the spam probability (0 to 1) from which USER's mail goes to Junk; "default"
    for the [junk] threshold of the config."""
    address = normalise_address(address)
    threshold: float | None = None
    if value.lower() != "default":
        invalid = CliError(f'invalid threshold {value!r}: above 0, at most 1, or "default"')
        try:
            threshold = float(value)
        except ValueError:
            raise invalid from None
        if not 0.0 < threshold <= 1.0:
            raise invalid

    async def run(store: Store) -> None:
        await store.junk.set_threshold(await _account_id(store, address), threshold)

    _with_store(_data_dir(ctx), run)
    shown = "default" if threshold is None else f"{threshold:.2f}"
    click.echo(f"junk threshold of {address}: {shown}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    try:
        result = cli.main(args=argv, prog_name="postoffice", standalone_mode=False)
    except click.UsageError as e:
        hint = f" (see: {e.ctx.command_path} --help)" if e.ctx is not None else ""
        _fail(f"{e.format_message()}{hint}", e.exit_code)
    except click.ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except click.Abort:
        _fail("interrupted", 130)
    sys.exit(result if isinstance(result, int) else 0)


def _fail(message: str, code: int) -> NoReturn:
    # One line, always: a multi-line message would break "one error, one line".
    click.echo(f"postoffice: error: {' '.join(message.split())}", err=True)
    sys.exit(code)
