"""The config file: defaults round-trip, every setting documented, every error names its line."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path

import pytest

from postoffice.config import (
    CONFIG_FILE,
    LISTENER_NAMES,
    Config,
    ConfigError,
    ListenerConfig,
    ServerConfig,
    TcpAddress,
    UnixAddress,
    format_size,
    load_config,
    parse_config,
    parse_listen_address,
    parse_size,
    render_config,
    write_default_config,
)

PATH = Path("/data/postoffice.toml")


def test_default_file_round_trips(tmp_path: Path) -> None:
    write_default_config(tmp_path / CONFIG_FILE, "example.test", "mail.example.test")
    assert load_config(tmp_path) == Config(server=ServerConfig(hostname="mail.example.test"))
    assert not list(tmp_path.glob("*.tmp"))


def test_an_empty_file_means_all_defaults() -> None:
    assert parse_config("", PATH) == Config()


def test_every_setting_is_written_under_a_one_line_comment() -> None:
    lines = render_config(Config(), "example.test").splitlines()
    for section in dataclasses.fields(Config):
        start = lines.index(f"[{section.name}]")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), None)
        body = lines[start:end]
        for setting in dataclasses.fields(getattr(Config(), section.name)):
            # The same name may be a setting of several sections (enabled, on_failure, ...).
            [index] = [i for i, line in enumerate(body) if line.startswith(f"{setting.name} = ")]
            comment = body[index - 1]
            assert re.fullmatch(r"# \S.{8,}", comment), (setting.name, comment)


def test_defaults_match_the_design() -> None:
    config = Config()
    assert config.listeners.smtp == TcpAddress("127.0.0.1", 2525)
    assert config.listeners.imaps == TcpAddress("127.0.0.1", 1993)
    assert config.limits.message_size == 50 * 1024 * 1024
    assert config.auth.plaintext_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert config.store.backend == "sqlite"
    assert config.log.format == "text"
    assert [listener.name for listener in config.enabled_listeners()] == list(LISTENER_NAMES)


def test_implicit_tls_follows_the_listener_name() -> None:
    tls = {listener.name for listener in Config().enabled_listeners() if listener.implicit_tls}
    assert tls == {"submissions", "imaps", "pop3s"}


def test_settings_are_read() -> None:
    text = """
[server]
hostname = "MX.Example.Test."
workers = 4

[listeners]
smtp = ":25"
imap = "[::1]:143"
lmtp = "unix:run/lmtp.sock"
pop3 = "off"

[limits]
message_size = "10M"
literal_size = 65536

[auth]
plaintext_networks = ["10.0.0.0/8"]
"""
    config = parse_config(text, PATH)
    assert config.server.hostname == "mx.example.test"
    assert config.server.workers == 4
    assert config.listeners.smtp == TcpAddress("", 25)
    assert config.listeners.imap == TcpAddress("::1", 143)
    assert config.listeners.lmtp == UnixAddress(Path("run/lmtp.sock"))
    assert config.listeners.pop3 is None
    assert "pop3" not in {listener.name for listener in config.enabled_listeners()}
    assert config.limits.message_size == 10 << 20
    assert config.limits.literal_size == 65536
    assert config.auth.plaintext_networks == (ipaddress.ip_network("10.0.0.0/8"),)


def test_non_default_values_round_trip() -> None:
    config = parse_config('[listeners]\nimap = "[::1]:143"\nlmtp = "unix:/run/l.sock"\n', PATH)
    assert parse_config(render_config(config, "example.test"), PATH) == config


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('[server]\nworkers = "2"\n', 2, 'server.workers: expected an integer, got a string ("2")'),
        ("[server]\nworkers = 0\n", 2, "server.workers: must be between 1 and 256"),
        ("[server]\nworkers = true\n", 2, "server.workers: expected an integer, got a boolean"),
        ('[server]\nhostname = "bad_name"\n', 2, "server.hostname: invalid host name"),
        ("\n\n[server]\nbogus = 1\n", 4, "server.bogus: unknown setting"),
        ("[nonsense]\nx = 1\n", 1, "[nonsense]: unknown section"),
        ("server = 3\n", 1, "server: must be a [section] table"),
        ('[limits]\n# size\nmessage_size = "50Q"\n', 3, "limits.message_size: invalid size '50Q'"),
        ("[limits]\nmessage_size = -1\n", 2, "limits.message_size: size must not be negative"),
        ("[limits]\nimap_idle_seconds = -5\n", 2, "limits.imap_idle_seconds: must not be negative"),
        ("[limits]\nmax_connections = 1.5\n", 2, "limits.max_connections: expected an integer"),
        ('[listeners]\nsmtp = "localhost"\n', 2, "listeners.smtp: invalid listen address"),
        ('[listeners]\nsmtp = "1.2.3.4:70000"\n', 2, "listeners.smtp: port 70000 is out of range"),
        ('[listeners]\nimap = "unix:/x"\n', 2, "listeners.imap: only lmtp can listen on a unix"),
        ('[listeners]\nsmtps = ":465"\n', 2, "listeners.smtps: unknown setting"),
        ("[listeners]\nsmtp = 25\n", 2, 'listeners.smtp: expected "HOST:PORT" or "off"'),
        ('[tls]\nmin_version = "TLSv1.1"\n', 2, 'tls.min_version: must be one of "TLSv1.2"'),
        ('[tls]\ncert = ""\n', 2, "tls.cert: expected a file path"),
        ('[auth]\nplaintext_networks = ["10.0.0.0/33"]\n', 2, "auth.plaintext_networks: invalid"),
        ('[auth]\nplaintext_networks = "10.0.0.0/8"\n', 2, "auth.plaintext_networks: expected"),
        ("[auth]\nexempt_loopback = 1\n", 2, "auth.exempt_loopback: expected true or false"),
        (
            "[auth]\ndelay_max_seconds = 1\ndelay_base_seconds = 2\n",
            3,
            "auth.delay_base_seconds: must not exceed delay_max_seconds",
        ),
        ("[auth]\nwindow_seconds = 0\n", 2, "auth.window_seconds: must be more than 0"),
        ('[store]\nbackend = "postgresql"\n', 2, 'store.backend: must be one of "sqlite"'),
        ('[log]\nformat = "xml"\n', 2, 'log.format: must be one of "text", "json"'),
        ('[log]\nlevel = "loud"\n', 2, "log.level: must be one of"),
        ("[server]\nworkers = 2\n\n[log]\nlevel = 3\n", 5, "log.level: must be one of"),
        ("server.workers = 0\n", 1, "server.workers: must be between"),
        ("[log]\nformat = \n", 2, "invalid TOML: invalid value (column 10)"),
        ("[server\n", 1, "invalid TOML"),
        ('[server]\nhostname = "a"\nhostname = "b"\n', 3, "invalid TOML"),
        ("[server]\nworkers = [1,\n", 2, "invalid TOML"),
    ],
)
def test_errors_name_the_file_line_and_key(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, PATH)
    message = str(caught.value)
    assert message.startswith(f"{PATH}, line {line}: "), message
    assert fragment in message, message
    assert caught.value.line == line
    assert "\n" not in message


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_bytes(b'[server]\nhostname = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path)


def test_listener_overrides() -> None:
    config = Config().with_listeners({"smtp": None, "imap": TcpAddress("127.0.0.1", 0)})
    enabled = {listener.name: listener for listener in config.enabled_listeners()}
    assert "smtp" not in enabled
    assert enabled["imap"] == ListenerConfig("imap", TcpAddress("127.0.0.1", 0))
    with pytest.raises(ValueError, match="unknown listener 'smtps'"):
        Config().with_listeners({"smtps": None})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2525", TcpAddress("127.0.0.1", 2525)),
        (":25", TcpAddress("", 25)),
        ("*:25", TcpAddress("", 25)),
        ("[::]:993", TcpAddress("::", 993)),
        ("[::1]:0", TcpAddress("::1", 0)),
        ("mail.example.test:587", TcpAddress("mail.example.test", 587)),
        ("off", None),
        ("unix:/run/postoffice/lmtp", UnixAddress(Path("/run/postoffice/lmtp"))),
    ],
)
def test_listen_addresses(text: str, expected: object) -> None:
    assert parse_listen_address(text, allow_unix=True) == expected
    if expected is not None:
        assert str(expected) == ("[::]:993" if text == "[::]:993" else text.replace("*", ""))


@pytest.mark.parametrize("text", ["", "25", "host", "::1:25", "[::1]25", "a b:25", "unix:", "x:-1"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text)) if text else "invalid"):
        parse_listen_address(text, allow_unix=True)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("4096", 4096),
        (4096, 4096),
        ("512K", 512 * 1024),
        ("512k", 512 * 1024),
        ("50M", 50 << 20),
        ("50MB", 50 << 20),
        ("50MiB", 50 << 20),
        (" 1G ", 1 << 30),
        ("2T", 2 << 40),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.5G", "-1", "50Q", "1 G B", "ten", True, -5, 1.0])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize("size", [0, 1, 1000, 1024, 50 << 20, 3 << 30, (1 << 30) + 1])
def test_format_size_is_exact(size: int) -> None:
    assert parse_size(format_size(size)) == size
