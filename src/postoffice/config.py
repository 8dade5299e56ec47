"""The configuration file `DATA/postoffice.toml`, loaded into frozen dataclasses.

Each section is a dataclass whose fields carry, next to their default, a one-line comment and a
parser (`_about`).  Loading, validating and writing the commented default file all walk those
declarations, so a new setting (or a new section added to `Config`) cannot be forgotten by one
of them.  Every error names the file, the line and the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar, get_type_hints

CONFIG_FILE: Final = "postoffice.toml"

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A configuration problem a user can fix; str() is the whole one-line message."""

    def __init__(self, path: Path, line: int | None, key: str | None, message: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.message = message
        where = str(path) if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class SettingError(ValueError):
    """Raised by a section's __post_init__ when settings conflict; names the key to blame."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# -- sizes -------------------------------------------------------------------------------

_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE: Final = re.compile(r"(\d+)\s*([KMGT]?)(?:I?B)?")


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like "50M", "1G", "512K", "4096" (binary units).

    Raises ValueError with a message fit to show a user.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value.strip().upper())
        if match:
            return int(match[1]) * _UNITS[match[2]]
    raise ValueError(f"invalid size {value!r}: use bytes or a number with K, M, G or T, like 50M")


def format_size(size: int) -> str:
    """The shortest exact form parse_size reads back ("50M" for 52428800)."""
    for unit in ("T", "G", "M", "K"):
        factor = _UNITS[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


# -- listen addresses ------------------------------------------------------------------------

IMPLICIT_TLS: Final = frozenset({"submissions", "imaps", "pop3s"})
UNIX_CAPABLE: Final = frozenset({"lmtp"})


@dataclass(frozen=True, slots=True)
class TcpAddress:
    host: str  # "" listens on every interface
    port: int  # 0 lets the kernel pick (tests)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: Path  # relative paths are taken from the data folder

    def __str__(self) -> str:
        return f"unix:{self.path}"


ListenAddress = TcpAddress | UnixAddress


def parse_listen_address(text: str, *, allow_unix: bool) -> ListenAddress | None:
    """ "HOST:PORT", "[V6]:PORT", ":PORT" (every interface), "unix:PATH" or "off" (None)."""
    if text == "off":
        return None
    if text.startswith("unix:"):
        if not allow_unix:
            raise ValueError("only lmtp can listen on a unix socket")
        if not text[5:]:
            raise ValueError(f"invalid listen address {text!r}: unix: needs a socket path")
        return UnixAddress(Path(text[5:]))
    match = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]\s]*)):(\d{1,5})", text)
    if not match:
        raise ValueError(f'invalid listen address {text!r}: use "HOST:PORT", "[::1]:PORT" or "off"')
    host, port = match[1] or match[2] or "", int(match[3])
    if port > 65535:
        raise ValueError(f"port {port} is out of range (0-65535)")
    if host == "*":
        host = ""
    return TcpAddress(host, port)


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One enabled listener as the listener layer sees it."""

    name: str
    address: ListenAddress

    @property
    def implicit_tls(self) -> bool:
        return self.name in IMPLICIT_TLS


# -- declaring settings ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Setting:
    doc: str
    parse: Callable[[Any], Any]
    render: Callable[[Any], str]


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(str(value))


def _about(
    doc: str, parse: Callable[[Any], T], render: Callable[[T], str] = _toml
) -> dict[str, _Setting]:
    """Field metadata: the setting's one-line comment, its parser and its TOML writer."""
    return {"setting": _Setting(doc, parse, render)}


def _int(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected an integer, got {_describe(value)}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _seconds(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"expected a number of seconds, got {_describe(value)}")
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_describe(value)}")
    return value


def _size(value: Any) -> int:
    return parse_size(value)


def _render_size(value: int) -> str:
    return _toml(format_size(value))


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            allowed = ", ".join(f'"{c}"' for c in choices)
            raise ValueError(f"must be one of {allowed}, got {_describe(value)}")
        return str(value)

    return parse


_HOST_LABEL: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def parse_hostname(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a host name, got {_describe(value)}")
    name = value.lower().rstrip(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(p) for p in name.split(".")):
        raise ValueError(f"invalid host name {value!r}")
    return name


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a file path, got {_describe(value)}")
    return Path(value)


def _networks(value: Any) -> tuple[Network, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(
            f'expected a list of networks like ["127.0.0.0/8"], got {_describe(value)}'
        )
    try:
        return tuple(ipaddress.ip_network(v, strict=False) for v in value)
    except ValueError as e:
        raise ValueError(f"invalid network: {e}") from None


def _render_networks(value: tuple[Network, ...]) -> str:
    return _toml(tuple(str(n) for n in value))


def _listen(name: str) -> Callable[[Any], ListenAddress | None]:
    def parse(value: Any) -> ListenAddress | None:
        if not isinstance(value, str):
            raise ValueError(f'expected "HOST:PORT" or "off", got {_describe(value)}')
        return parse_listen_address(value, allow_unix=name in UNIX_CAPABLE)

    return parse


def _render_listen(value: ListenAddress | None) -> str:
    return _toml("off" if value is None else str(value))


def _listener(doc: str, name: str) -> dict[str, _Setting]:
    return _about(doc, _listen(name), _render_listen)


def _describe(value: object) -> str:
    scalar = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if type(value) in scalar:
        return f"{scalar[type(value)]} ({_toml(value)})"
    if isinstance(value, dict):
        return "a table"
    return "an array" if isinstance(value, list) else "a date or time"


# -- the sections ------------------------------------------------------------------------------
# A section's docstring is the comment written above it in the default file.


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The server as a whole."""

    hostname: str = field(
        default="localhost",
        metadata=_about("Name this server uses for itself (SMTP greeting, TLS).", parse_hostname),
    )
    workers: int = field(
        default=1,
        metadata=_about(
            "Processes sharing the listening sockets (--workers overrides).", _int(1, 256)
        ),
    )
    shutdown_grace_seconds: float = field(
        default=30.0,
        metadata=_about("Seconds in-flight sessions get to finish after SIGTERM.", _seconds),
    )


@dataclass(frozen=True, slots=True)
class ListenersConfig:
    """Where each protocol listens: "HOST:PORT", "[::1]:PORT", ":PORT" (every interface) or
    "off".  The defaults are the development ports; each comment gives the production one."""

    smtp: ListenAddress | None = field(
        default=TcpAddress("127.0.0.1", 2525),
        metadata=_listener("ESMTP from the world to local domains (MX); production :25.", "smtp"),
    )
    submission: ListenAddress | None = field(
        default=TcpAddress("127.0.0.1", 5587),
        metadata=_listener("Users sending mail, STARTTLS + AUTH; production :587.", "submission"),
    )
    submissions: ListenAddress | None = field(
        default=TcpAddress("127.0.0.1", 5465),
        metadata=_listener("Submission over implicit TLS; production :465.", "submissions"),
    )
    lmtp: ListenAddress | None = field(
        default=TcpAddress("127.0.0.1", 2424),
        metadata=_listener('LMTP hand-over from another MTA; also "unix:PATH".', "lmtp"),
    )
    imap: ListenAddress | None = field(
        default=TcpAddress("127.0.0.1", 1143),
        metadata=_listener("IMAP4rev1 + IMAP4rev2 with STARTTLS; production :143.", "imap"),
    )
    imaps: ListenAddress | None = field(
        default=TcpAddress("127.0.0.1", 1993),
        metadata=_listener("IMAP over implicit TLS; production :993.", "imaps"),
    )
    pop3: ListenAddress | None = field(
        default=TcpAddress("127.0.0.1", 1110),
        metadata=_listener("POP3 with STLS; production :110.", "pop3"),
    )
    pop3s: ListenAddress | None = field(
        default=TcpAddress("127.0.0.1", 1995),
        metadata=_listener("POP3 over implicit TLS; production :995.", "pop3s"),
    )
    sieve: ListenAddress | None = field(
        default=TcpAddress("127.0.0.1", 4190),
        metadata=_listener("ManageSieve; production :4190.", "sieve"),
    )
    http: ListenAddress | None = field(
        default=TcpAddress("127.0.0.1", 8080),
        metadata=_listener(
            "Webmail, admin, autoconfig, metrics, JSON API; production :443.", "http"
        ),
    )


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for every listener (implicit TLS and STARTTLS)."""

    cert: Path = field(
        default=Path("tls/cert.pem"),
        metadata=_about("Certificate chain (PEM), relative to the data folder.", _path),
    )
    key: Path = field(
        default=Path("tls/key.pem"),
        metadata=_about("Private key (PEM), relative to the data folder.", _path),
    )
    min_version: str = field(
        default="TLSv1.2",
        metadata=_about(
            'Oldest TLS version accepted: "TLSv1.2" or "TLSv1.3".', _choice("TLSv1.2", "TLSv1.3")
        ),
    )

    def paths(self, data_dir: Path) -> tuple[Path, Path]:
        """(cert, key) as absolute paths."""
        return data_dir / self.cert, data_dir / self.key


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Logins and failed-login throttling."""

    plaintext_networks: tuple[Network, ...] = field(
        default=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        metadata=_about(
            "Client networks allowed to log in without TLS.", _networks, _render_networks
        ),
    )
    max_failures_per_ip: int = field(
        default=10,
        metadata=_about(
            "Failed logins from one IP (IPv6: one /64) before it is locked out.", _int(1, 10**6)
        ),
    )
    max_failures_per_account: int = field(
        default=5,
        metadata=_about("Failed logins for one account before it is locked out.", _int(1, 10**6)),
    )
    window_seconds: float = field(
        default=300.0, metadata=_about("Seconds over which failed logins are counted.", _seconds)
    )
    lockout_seconds: float = field(
        default=300.0, metadata=_about("Seconds a locked-out IP or account must wait.", _seconds)
    )
    delay_base_seconds: float = field(
        default=0.5,
        metadata=_about("Delay before answering after one failure; doubles with each.", _seconds),
    )
    delay_max_seconds: float = field(
        default=5.0, metadata=_about("Longest delay before answering a login.", _seconds)
    )
    max_tracked: int = field(
        default=100_000,
        metadata=_about("Most IPs (and most accounts) whose failures are kept.", _int(1, 10**9)),
    )
    exempt_loopback: bool = field(
        default=False,
        metadata=_about("Never throttle 127.0.0.0/8 and ::1 (for a trusted local proxy).", _bool),
    )

    def __post_init__(self) -> None:
        if self.window_seconds == 0:
            raise SettingError("window_seconds", "must be more than 0")
        if self.delay_base_seconds > self.delay_max_seconds:
            raise SettingError("delay_base_seconds", "must not exceed delay_max_seconds")


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Limits that keep one client from exhausting the server."""

    max_connections: int = field(
        default=10_000,
        metadata=_about("Open connections per process, all listeners together.", _int(1, 10**7)),
    )
    max_connections_per_ip: int = field(
        default=50,
        metadata=_about("Open connections per process from one client IP.", _int(1, 10**7)),
    )
    command_line_length: int = field(
        default=65536,
        metadata=_about(
            "Longest IMAP/POP3/ManageSieve command line, in bytes.", _int(512, 1 << 20)
        ),
    )
    bad_commands: int = field(
        default=20,
        metadata=_about(
            "Malformed or refused IMAP/POP3 commands in a row before the server hangs up.",
            _int(1, 10**6),
        ),
    )
    message_size: int = field(
        default=50 << 20,
        metadata=_about("Largest message accepted (SMTP SIZE, IMAP APPEND).", _size, _render_size),
    )
    literal_size: int = field(
        default=1 << 20,
        metadata=_about("Largest IMAP literal other than a message.", _size, _render_size),
    )
    tls_handshake_seconds: float = field(
        default=30.0, metadata=_about("Seconds a client gets to finish a TLS handshake.", _seconds)
    )
    smtp_idle_seconds: float = field(
        default=300.0,
        metadata=_about("Idle seconds before SMTP, LMTP, submission hang up.", _seconds),
    )
    imap_idle_seconds: float = field(
        default=1800.0,
        metadata=_about("Idle seconds before IMAP hangs up (RFC 9051 §5.4: >= 30 min).", _seconds),
    )
    pop3_idle_seconds: float = field(
        default=600.0,
        metadata=_about("Idle seconds before POP3 hangs up (RFC 1939 §3: >= 10 min).", _seconds),
    )
    sieve_idle_seconds: float = field(
        default=300.0, metadata=_about("Idle seconds before ManageSieve hangs up.", _seconds)
    )
    http_idle_seconds: float = field(
        default=60.0, metadata=_about("Idle seconds before an HTTP keep-alive ends.", _seconds)
    )


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where mail and metadata live."""

    backend: str = field(
        default="sqlite",
        metadata=_about('Metadata backend: "sqlite" (embedded).', _choice("sqlite")),
    )
    group_commit_max: int = field(
        default=256,
        metadata=_about("Most writes committed together (one fsync).", _int(1, 100_000)),
    )
    inline_max: int = field(
        default=128 * 1024,
        metadata=_about(
            "Messages up to this size are kept inside the database, larger ones as files.",
            _size,
            _render_size,
        ),
    )


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """SMTP, submission and LMTP policy."""

    max_recipients: int = field(
        default=100,
        metadata=_about("Recipients per message; more get 452 4.5.3.", _int(1, 100_000)),
    )
    max_command_line: int = field(
        default=512,
        metadata=_about(
            "Longest SMTP command line (RFC 5321 §4.5.3.1.4: at least 512).", _int(512, 65536)
        ),
    )
    max_errors: int = field(
        default=10,
        metadata=_about("Bad commands in one session before 421 and close.", _int(1, 1000)),
    )
    recipient_delimiter: str = field(
        default="+",
        metadata=_about(
            'Plus-addressing: "user+tag@" delivers to user@ ("" turns it off).',
            _choice("", "+", "-", "_", "."),
        ),
    )
    check_from_header: bool = field(
        default=True,
        metadata=_about(
            "Submission: the From: header must also be one of the user's addresses.", _bool
        ),
    )
    long_lines: str = field(
        default="reject",
        metadata=_about(
            'Text lines over 998 octets (RFC 5322 §2.1.1): "reject" (550 5.6.0) or "accept".',
            _choice("reject", "accept"),
        ),
    )


_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE: Final = re.compile(r"(\d+)\s*([smhd]?)")


def parse_duration(value: object) -> int:
    """Seconds from an integer or a string like "90", "5m", "4h", "5d".

    Raises ValueError with a message fit to show a user.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.strip().lower())
        if match:
            return int(match[1]) * _DURATION_UNITS[match[2] or "s"]
    raise ValueError(f"invalid duration {value!r}: use seconds or a number with s, m, h or d")


def format_duration(seconds: int) -> str:
    """The shortest exact form parse_duration reads back ("4h" for 14400)."""
    for unit in ("d", "h", "m"):
        factor = _DURATION_UNITS[unit]
        if seconds and seconds % factor == 0:
            return f"{seconds // factor}{unit}"
    return f"{seconds}s"


def _duration(value: Any) -> int:
    return parse_duration(value)


def _render_duration(value: int) -> str:
    return _toml(format_duration(value))


def _durations(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f'expected a list of durations like ["1m", "5m"], got {_describe(value)}')
    delays = tuple(parse_duration(v) for v in value)
    if any(d == 0 for d in delays):
        raise ValueError("a retry delay must be more than 0")
    return delays


def _render_durations(value: tuple[int, ...]) -> str:
    return _toml(tuple(format_duration(v) for v in value))


def _host_port(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected "HOST:PORT" or "", got {_describe(value)}')
    if value and parse_listen_address(value, allow_unix=False) is None:
        raise ValueError('expected "HOST:PORT" or ""')
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_describe(value)}")
    return value


def _relay_host(value: Any) -> str:
    return "" if value == "" else parse_hostname(value)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Outbound delivery: the queue worker that sends mail for remote recipients."""

    resolver: str = field(
        default="",
        metadata=_about(
            'DNS server for every lookup (MX, SPF, DKIM, DMARC, DNSBL) as "HOST:PORT"; "" uses'
            " the system resolver.",
            _host_port,
        ),
    )
    smtp_port: int = field(
        default=25,
        metadata=_about("Port of remote mail servers found by MX (RFC 5321: 25).", _int(1, 65535)),
    )
    retry_schedule: tuple[int, ...] = field(
        default=(60, 300, 900, 1800, 3600, 7200, 14400),
        metadata=_about(
            "Waits between attempts after a temporary failure; the last one repeats.",
            _durations,
            _render_durations,
        ),
    )
    give_up_after: int = field(
        default=5 * 86400,
        metadata=_about(
            "Age at which a message still undelivered is bounced.", _duration, _render_duration
        ),
    )
    delay_warning_after: int = field(
        default=4 * 3600,
        metadata=_about(
            'Age at which the sender is told of a delay once ("0s": never).',
            _duration,
            _render_duration,
        ),
    )
    connections_per_domain: int = field(
        default=4,
        metadata=_about("Most connections open at once to one destination domain.", _int(1, 1000)),
    )
    max_connections_out: int = field(
        default=64,
        metadata=_about("Most outbound SMTP connections open at once.", _int(1, 100_000)),
    )
    messages_per_connection: int = field(
        default=100,
        metadata=_about("Messages sent over one connection before it is closed.", _int(1, 100_000)),
    )
    connect_timeout_seconds: float = field(
        default=30.0,
        metadata=_about("Seconds to wait for a remote server to connect and greet.", _seconds),
    )
    command_timeout_seconds: float = field(
        default=300.0,
        metadata=_about(
            "Seconds to wait for any reply (RFC 5321 §4.5.3.2: 5 min, 10 after DATA).", _seconds
        ),
    )
    poll_seconds: float = field(
        default=5.0,
        metadata=_about("Seconds between looks at the queue for mail that is due.", _seconds),
    )

    def __post_init__(self) -> None:
        if self.poll_seconds == 0:
            raise SettingError("poll_seconds", "must be more than 0")


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """A smarthost: when host is set, all outbound mail goes to it instead of MX delivery."""

    host: str = field(
        default="",
        metadata=_about('Relay host name or address; "" delivers by MX.', _relay_host),
    )
    port: int = field(
        default=587, metadata=_about("Relay port (587 submission, 465 TLS, 25).", _int(1, 65535))
    )
    tls: str = field(
        default="starttls",
        metadata=_about(
            'Relay TLS: "starttls" (required), "tls" (implicit) or "none".',
            _choice("starttls", "tls", "none"),
        ),
    )
    username: str = field(
        default="", metadata=_about('Relay login ("" sends without AUTH).', _text)
    )
    password: str = field(default="", metadata=_about("Relay password for username.", _text))

    def __post_init__(self) -> None:
        if self.username and not self.password:
            raise SettingError("password", "is needed when username is set")


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Log lines on stderr."""

    format: str = field(
        default="text",
        metadata=_about(
            'Line format: "text" or "json" (--log-format overrides).', _choice("text", "json")
        ),
    )
    level: str = field(
        default="info",
        metadata=_about(
            'Least severe level logged: "debug", "info", "warning" or "error".',
            _choice("debug", "info", "warning", "error"),
        ),
    )


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The http listener: client auto-configuration and metrics."""

    metrics_token: str = field(
        default="",
        metadata=_about(
            'Bearer token /metrics requires ("" turns /metrics off: it answers 404).', _text
        ),
    )


def _fraction(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"expected a number between 0 and 1, got {_describe(value)}")
    if not 0 <= value <= 1:
        raise ValueError(f"must be between 0 and 1, got {value}")
    return float(value)


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f'expected a list of names like ["zen.example"], got {_describe(value)}')
    return tuple(parse_hostname(v) for v in value)


def _clamd_address(value: Any) -> str:
    """ "" (off), "unix:PATH" or "HOST:PORT"."""
    if not isinstance(value, str):
        raise ValueError(f'expected "unix:PATH", "HOST:PORT" or "", got {_describe(value)}')
    if value and not value.startswith("unix:"):
        _host_port(value)
    return value


def _url(value: Any) -> str:
    if not isinstance(value, str) or (value and not value.startswith(("http://", "https://"))):
        raise ValueError(f'expected an http:// or https:// URL or "", got {_describe(value)}')
    return value


_ON_FAILURE: Final = _choice("accept", "tempfail")
_ON_FAILURE_DOC: Final = (
    ' when its service is down or times out: "accept" (fail open) or "tempfail" (451, the'
    " sender retries)."
)


@dataclass(frozen=True, slots=True)
class SenderAuthConfig:
    """SPF, DKIM, DMARC and ARC checks of mail from the world (not of authenticated users)."""

    spf: bool = field(default=True, metadata=_about("Check SPF (RFC 7208).", _bool))
    dkim: bool = field(default=True, metadata=_about("Verify DKIM signatures (RFC 6376).", _bool))
    arc: bool = field(default=True, metadata=_about("Verify the ARC chain (RFC 8617).", _bool))
    dmarc: bool = field(default=True, metadata=_about("Apply DMARC (RFC 7489).", _bool))
    dmarc_reject: str = field(
        default="reject",
        metadata=_about(
            'What a failing message from a p=reject domain gets: "reject" (550), "quarantine"'
            ' (Junk) or "none" (a header only).',
            _choice("reject", "quarantine", "none"),
        ),
    )
    dmarc_quarantine: str = field(
        default="quarantine",
        metadata=_about(
            'What a failing message from a p=quarantine domain gets: "quarantine" or "none".',
            _choice("quarantine", "none"),
        ),
    )
    timeout_seconds: float = field(
        default=10.0, metadata=_about("Seconds all DNS lookups of one message may take.", _seconds)
    )
    on_failure: str = field(
        default="accept",
        metadata=_about(
            "What a message gets" + _ON_FAILURE_DOC.replace(" its", " DNS"), _ON_FAILURE
        ),
    )


@dataclass(frozen=True, slots=True)
class DnsblConfig:
    """DNS blocklists checked for each client IP of the smtp listener."""

    zones: tuple[str, ...] = field(
        default=(),
        metadata=_about(
            'Blocklist zones, e.g. ["zen.spamhaus.org"]; [] turns DNSBL checks off.', _names
        ),
    )
    action: str = field(
        default="reject",
        metadata=_about(
            'A listed client gets "reject" (554 at RCPT) or "tag" (a header, counted as junk).',
            _choice("reject", "tag"),
        ),
    )
    on_failure: str = field(
        default="accept",
        metadata=_about(
            "What a client gets" + _ON_FAILURE_DOC.replace(" its", " the DNS"), _ON_FAILURE
        ),
    )


@dataclass(frozen=True, slots=True)
class GreylistConfig:
    """Greylisting: the first message of an unknown (client, sender, recipient) triplet gets 451."""

    enabled: bool = field(default=False, metadata=_about("Greylist mail from the world.", _bool))
    delay: int = field(
        default=300,
        metadata=_about(
            "How long a new triplet must wait before a retry is accepted.",
            _duration,
            _render_duration,
        ),
    )
    retry_window: int = field(
        default=2 * 86400,
        metadata=_about(
            "How long a greylisted triplet waits for its retry before it is forgotten.",
            _duration,
            _render_duration,
        ),
    )
    expiry: int = field(
        default=36 * 86400,
        metadata=_about(
            "How long a triplet that passed is remembered after its last message.",
            _duration,
            _render_duration,
        ),
    )


@dataclass(frozen=True, slots=True)
class RateLimitsConfig:
    """Per-client-IP rates on the smtp listener (0 turns a limit off)."""

    connections_per_minute: int = field(
        default=60,
        metadata=_about("New SMTP connections per minute from one IP.", _int(0, 10**7)),
    )
    messages_per_hour: int = field(
        default=1000,
        metadata=_about("Messages per hour from one IP (MAIL FROM commands).", _int(0, 10**9)),
    )
    recipients_per_hour: int = field(
        default=5000,
        metadata=_about("Accepted recipients per hour from one IP.", _int(0, 10**9)),
    )
    exempt_networks: tuple[Network, ...] = field(
        default=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        metadata=_about(
            "Client networks no rate limit applies to (local relays, this host).",
            _networks,
            _render_networks,
        ),
    )


@dataclass(frozen=True, slots=True)
class JunkConfig:
    """Junk mail: the built-in per-account Bayesian classifier, optionally rspamd or spamd."""

    enabled: bool = field(default=True, metadata=_about("Classify incoming mail.", _bool))
    threshold: float = field(
        default=0.9,
        metadata=_about(
            "Spam probability at or above which mail goes to the Junk folder (per-account"
            " setting overrides).",
            _fraction,
        ),
    )
    reject_threshold: float = field(
        default=1.0,
        metadata=_about(
            "Spam probability at or above which mail is refused with 550 at DATA (1 = never).",
            _fraction,
        ),
    )
    min_trained: int = field(
        default=10,
        metadata=_about(
            "Spam and ham messages each an account must have trained before its classifier"
            " decides anything.",
            _int(0, 10**6),
        ),
    )
    rspamd_url: str = field(
        default="",
        metadata=_about('rspamd controller/worker URL, e.g. "http://127.0.0.1:11333".', _url),
    )
    spamd: str = field(
        default="", metadata=_about('SpamAssassin spamd as "HOST:PORT" ("" off).', _host_port)
    )
    timeout_seconds: float = field(
        default=15.0, metadata=_about("Seconds rspamd or spamd may take per message.", _seconds)
    )
    on_failure: str = field(
        default="accept",
        metadata=_about("What a message gets when rspamd or spamd is down.", _ON_FAILURE),
    )


@dataclass(frozen=True, slots=True)
class AntivirusConfig:
    """Virus scanning through ClamAV's clamd."""

    clamd: str = field(
        default="",
        metadata=_about(
            'clamd socket: "unix:/run/clamav/clamd.ctl" or "HOST:PORT"; "" turns scanning off.',
            _clamd_address,
        ),
    )
    action: str = field(
        default="reject",
        metadata=_about(
            'An infected message gets "reject" (550 at DATA) or "quarantine" (kept for the'
            " admin, who is told).",
            _choice("reject", "quarantine"),
        ),
    )
    max_scan_size: int = field(
        default=25 << 20,
        metadata=_about(
            "Largest message scanned; larger ones pass unscanned.", _size, _render_size
        ),
    )
    timeout_seconds: float = field(
        default=60.0, metadata=_about("Seconds clamd may take per message.", _seconds)
    )
    on_failure: str = field(
        default="tempfail",
        metadata=_about(
            "What a message gets" + _ON_FAILURE_DOC.replace(" its", " clamd's"), _ON_FAILURE
        ),
    )


@dataclass(frozen=True, slots=True)
class SieveConfig:
    """Users' Sieve scripts (RFC 5228) and the ManageSieve listener (RFC 5804)."""

    enabled: bool = field(default=True, metadata=_about("Run users' active scripts.", _bool))
    max_script_size: int = field(
        default=1 << 20, metadata=_about("Largest script.", _size, _render_size)
    )
    max_scripts: int = field(
        default=32, metadata=_about("Scripts one account may keep.", _int(1, 10**4))
    )
    max_redirects: int = field(
        default=4, metadata=_about("redirect actions one script run may take.", _int(0, 1000))
    )
    max_actions: int = field(
        default=32, metadata=_about("Actions of any kind one script run may take.", _int(1, 10**4))
    )
    vacation_min_days: int = field(
        default=1, metadata=_about("Shortest vacation :days a script may ask for.", _int(0, 365))
    )
    vacation_max_days: int = field(
        default=90, metadata=_about("Longest vacation :days.", _int(1, 3650))
    )
    cpu_seconds: float = field(
        default=1.0, metadata=_about("Longest one script run may take.", _seconds)
    )


@dataclass(frozen=True, slots=True)
class WebmailConfig:
    """Webmail on the http listener."""

    enabled: bool = field(default=True, metadata=_about("Serve webmail at /.", _bool))
    session_seconds: int = field(
        default=8 * 3600,
        metadata=_about("How long a webmail login lasts without use.", _duration, _render_duration),
    )
    page_size: int = field(
        default=50, metadata=_about("Messages per page in a message list.", _int(5, 1000))
    )
    max_upload: int = field(
        default=25 << 20,
        metadata=_about("Largest total of attachments in one message.", _size, _render_size),
    )
    secure_cookies: str = field(
        default="auto",
        metadata=_about(
            'Secure cookie flag: "auto" (when the request came over TLS or'
            ' X-Forwarded-Proto: https from a trusted proxy), "always" or "never".',
            _choice("auto", "always", "never"),
        ),
    )


@dataclass(frozen=True, slots=True)
class Config:
    """The whole file; each field is one [section].  Later features add sections here."""

    server: ServerConfig = field(default_factory=ServerConfig)
    listeners: ListenersConfig = field(default_factory=ListenersConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    log: LogConfig = field(default_factory=LogConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    sender_auth: SenderAuthConfig = field(default_factory=SenderAuthConfig)
    dnsbl: DnsblConfig = field(default_factory=DnsblConfig)
    greylist: GreylistConfig = field(default_factory=GreylistConfig)
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    junk: JunkConfig = field(default_factory=JunkConfig)
    antivirus: AntivirusConfig = field(default_factory=AntivirusConfig)
    sieve: SieveConfig = field(default_factory=SieveConfig)
    webmail: WebmailConfig = field(default_factory=WebmailConfig)

    def enabled_listeners(self) -> list[ListenerConfig]:
        """The listeners not set to "off", in file order."""
        return [
            ListenerConfig(name, address)
            for name, address in _values(self.listeners)
            if address is not None
        ]

    def with_listeners(self, overrides: Mapping[str, ListenAddress | None]) -> Config:
        """A copy with some listeners moved or turned off (None); names must be known."""
        unknown = set(overrides) - set(LISTENER_NAMES)
        if unknown:
            raise ValueError(f"unknown listener {sorted(unknown)[0]!r} ({_known_listeners()})")
        return dataclasses.replace(self, listeners=dataclasses.replace(self.listeners, **overrides))


LISTENER_NAMES: Final = tuple(f.name for f in dataclasses.fields(ListenersConfig))


def _known_listeners() -> str:
    return "known: " + ", ".join(LISTENER_NAMES)


def _values(section: Any) -> Iterator[tuple[str, Any]]:
    for f in dataclasses.fields(section):
        yield f.name, getattr(section, f.name)


def _settings(cls: type) -> Iterator[tuple[str, _Setting]]:
    for f in dataclasses.fields(cls):
        yield f.name, f.metadata["setting"]


def _section_types() -> dict[str, type]:
    return dict(get_type_hints(Config))


# -- loading ------------------------------------------------------------------------------------


def load_config(data_dir: Path) -> Config:
    """Read and validate `data_dir/postoffice.toml`.

    Raises FileNotFoundError when the file is missing and ConfigError when it is wrong.
    """
    path = data_dir / CONFIG_FILE
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, None, f"not UTF-8 text ({e.reason})") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> Config:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _syntax_error(path, str(e), text) from None
    lines = text.splitlines()
    types = _section_types()
    sections: dict[str, Any] = {}
    for name, table in document.items():
        if name not in types:
            known = ", ".join(types)
            raise ConfigError(
                path, _find_line(lines, name), f"[{name}]", f"unknown section ({known})"
            )
        if not isinstance(table, dict):
            raise ConfigError(path, _find_line(lines, name), name, "must be a [section] table")
        sections[name] = _load_section(types[name], name, table, path, lines)
    return Config(**sections)


def _load_section(
    cls: type, section: str, table: dict[str, Any], path: Path, lines: list[str]
) -> Any:
    declared = dict(_settings(cls))
    values: dict[str, Any] = {}
    for key, raw in table.items():
        line = _find_line(lines, section, key)
        if key not in declared:
            known = ", ".join(declared)
            raise ConfigError(path, line, f"{section}.{key}", f"unknown setting (known: {known})")
        try:
            values[key] = declared[key].parse(raw)
        except ValueError as e:
            raise ConfigError(path, line, f"{section}.{key}", str(e)) from None
    try:
        return cls(**values)
    except SettingError as e:
        line = _find_line(lines, section, e.key)
        raise ConfigError(path, line, f"{section}.{e.key}", str(e)) from None


def _syntax_error(path: Path, message: str, text: str) -> ConfigError:
    match = re.fullmatch(r"(.*) \(at (?:line (\d+), column (\d+)|end of document)\)", message)
    if not match:
        return ConfigError(path, None, None, f"invalid TOML: {message}")
    what = match[1][:1].lower() + match[1][1:]
    if match[2] is None:
        return ConfigError(path, max(1, len(text.splitlines())), None, f"invalid TOML: {what}")
    return ConfigError(path, int(match[2]), None, f"invalid TOML: {what} (column {match[3]})")


_HEADER_RE: Final = re.compile(r"\s*\[\s*([^\[\]]+?)\s*\]")
_KEY_RE: Final = re.compile(r"\s*([A-Za-z0-9_.\"' -]+?)\s*=")


def _find_line(lines: list[str], section: str, key: str | None = None) -> int | None:
    """The line defining `section.key` (or the section), found by a light scan of the text.

    tomllib reports no positions for values, so semantic errors locate their key here.
    Falls back to the section's header when the key sits in an inline table.
    """
    wanted = (section,) if key is None else (section, key)
    current: tuple[str, ...] = ()
    section_line: int | None = None
    for number, line in enumerate(lines, 1):
        header = _HEADER_RE.match(line)
        if header and not line.lstrip().startswith("[["):
            current = _key_path(header[1])
            if current[:1] == (section,) and section_line is None:
                section_line = number
            if current[: len(wanted)] == wanted:
                return number
            continue
        assignment = _KEY_RE.match(line)
        if assignment:
            full = current + _key_path(assignment[1])
            if full[: len(wanted)] == wanted:
                return number
            if full[:1] == (section,) and section_line is None:
                section_line = number
    return section_line


def _key_path(dotted: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in dotted.split("."))


# -- writing the default file ------------------------------------------------------------------


def write_default_config(path: Path, domain: str, hostname: str) -> None:
    """Write a complete config with every setting spelled out under a one-line comment.

    Written to a temporary name and renamed, so a crash never leaves half a file that would
    make the folder look initialised.
    """
    config = Config(server=ServerConfig(hostname=hostname))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_config(config, domain), "utf-8")
    os.replace(tmp, path)


def render_config(config: Config, domain: str) -> str:
    out = [
        f"# postoffice configuration for {domain}.",
        "# Every setting is written out with its default; sizes take K, M, G or T (1K = 1024).",
    ]
    for name, section in _values(config):
        out.append("")
        out.extend(f"# {line.strip()}" for line in (type(section).__doc__ or "").splitlines())
        out.append(f"[{name}]")
        for key, meta in _settings(type(section)):
            out.append(f"# {meta.doc}")
            out.append(f"{key} = {meta.render(getattr(section, key))}")
    return "\n".join(out) + "\n"
