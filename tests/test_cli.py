"""Every `postoffice` command and its error cases, through the installed console script."""

from __future__ import annotations

import asyncio
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509

from conftest import DOMAIN, Cli, assert_one_error_line, clean_env
from postoffice.auth.passwords import verify_password
from postoffice.server import default_registry
from postoffice.store import open_store
from postoffice.store.model import Credentials

GENERATED = re.compile(r"^generated password \(shown only once\): (\S+)$", re.MULTILINE)


def credentials(data: Path, address: str) -> Credentials | None:
    async def read() -> Credentials | None:
        store = await open_store(data)
        try:
            return await store.get_credentials(address)
        finally:
            await store.close()

    return asyncio.run(read())


def password_works(data: Path, address: str, password: str) -> bool:
    found = credentials(data, address)
    assert found is not None, f"no account {address}"
    return verify_password(found.password_hash, password) and found.scram_sha256 is not None


# -- init ---------------------------------------------------------------------------------------


def test_init_creates_config_tls_and_store(cli: Cli) -> None:
    out = cli.ok("init", "--domain", "Example.TEST")
    assert "initialised" in out
    assert "example.test" in out
    data = cli.data
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert (data / "store" / "meta.sqlite3").exists()
    assert stat.S_IMODE((data / "tls" / "key.pem").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((data / "tls" / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mail.example.test"]
    config = (data / "postoffice.toml").read_text()
    assert 'hostname = "mail.example.test"' in config
    assert cli.ok("domain", "list") == "example.test\n"


def test_init_with_a_hostname(cli: Cli) -> None:
    cli.ok("init", "--domain", DOMAIN, "--hostname", "MX1.Example.Test")
    assert 'hostname = "mx1.example.test"' in (cli.data / "postoffice.toml").read_text()


def test_init_into_an_existing_empty_folder(cli: Cli) -> None:
    cli.data.mkdir()
    cli.ok("init", "--domain", DOMAIN)


def test_init_refuses_an_initialised_folder(data_dir: Path, cli: Cli) -> None:
    before = (data_dir / "postoffice.toml").read_text()
    assert "already initialised" in cli.fails("init", "--domain", "other.test")
    assert (data_dir / "postoffice.toml").read_text() == before


def test_init_refuses_a_folder_with_other_files(cli: Cli) -> None:
    cli.data.mkdir()
    (cli.data / "notes.txt").write_text("mine")
    assert "is not empty" in cli.fails("init", "--domain", DOMAIN)
    assert (cli.data / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "domain", ["", "no_underscores.test", "-bad.test", "a..b", "x" * 64 + ".t"]
)
def test_init_refuses_a_bad_domain_and_creates_nothing(cli: Cli, domain: str) -> None:
    assert "invalid domain" in cli.fails("init", "--domain", domain)
    assert not cli.data.exists()


def test_init_needs_a_domain(cli: Cli) -> None:
    result = cli("init")
    message = assert_one_error_line(result, code=2)
    assert "Missing option '--domain'" in message


# -- the data folder ---------------------------------------------------------------------------


def test_a_missing_data_folder_is_an_error(cli: Cli) -> None:
    assert "does not exist" in cli.fails("domain", "list")


def test_an_uninitialised_folder_is_an_error(cli: Cli) -> None:
    cli.data.mkdir()
    message = cli.fails("user", "list")
    assert "is not initialised" in message
    assert "init --domain" in message


def test_data_defaults_to_the_environment_then_the_current_folder(
    data_dir: Path, tmp_path: Path
) -> None:
    from_env = Cli(data_dir)(
        "domain", "list", with_data=False, env=clean_env(POSTOFFICE_DATA=str(data_dir))
    )
    assert from_env.returncode == 0
    assert from_env.stdout == "example.test\n"
    data_dir.rename(tmp_path / "postoffice-data")
    from_cwd = Cli(data_dir)("domain", "list", with_data=False, cwd=tmp_path)
    assert from_cwd.returncode == 0
    assert from_cwd.stdout == "example.test\n"


def test_a_config_error_is_reported_with_its_line(data_dir: Path, cli: Cli) -> None:
    config = data_dir / "postoffice.toml"
    lines = config.read_text().splitlines()
    index = lines.index('message_size = "50M"')
    lines[index] = 'message_size = "lots"'
    config.write_text("\n".join(lines) + "\n")
    message = cli.fails("status")
    assert f"postoffice.toml, line {index + 1}: limits.message_size: invalid size" in message


def test_a_toml_syntax_error_is_reported_with_its_line(data_dir: Path, cli: Cli) -> None:
    config = data_dir / "postoffice.toml"
    config.write_text(config.read_text() + "\n[broken\n")
    line = len(config.read_text().splitlines())
    assert f"postoffice.toml, line {line}: invalid TOML" in cli.fails("user", "list")


# -- domains ------------------------------------------------------------------------------------


def test_domains(data_dir: Path, cli: Cli) -> None:
    assert cli.ok("domain", "add", "Other.Test") == "added domain other.test\n"
    assert cli.ok("domain", "list").split() == ["example.test", "other.test"]
    assert "already exists" in cli.fails("domain", "add", "other.test")
    cli.ok("domain", "remove", "other.test")
    assert cli.ok("domain", "list").split() == ["example.test"]
    assert "other.test" in cli.fails("domain", "remove", "other.test")
    assert "invalid domain" in cli.fails("domain", "add", "bad domain")


def test_a_domain_with_users_cannot_be_removed(data_dir: Path, cli: Cli) -> None:
    cli.ok("user", "add", "a@example.test", "--password", "pw")
    cli.fails("domain", "remove", DOMAIN)
    assert cli.ok("domain", "list").split() == [DOMAIN]


# -- users --------------------------------------------------------------------------------------


def test_user_add_with_a_password(data_dir: Path, cli: Cli) -> None:
    out = cli.ok("user", "add", "Alice@Example.Test", "--password", "correct horse")
    assert out == "added user Alice@example.test\n"
    assert password_works(data_dir, "Alice@example.test", "correct horse")
    assert cli.ok("user", "list").startswith("Alice@example.test ")


def test_user_add_reads_the_password_from_stdin(data_dir: Path, cli: Cli) -> None:
    cli.ok("user", "add", "bob@example.test", "--password-stdin", stdin=" spaced pw \nignored\n")
    assert password_works(data_dir, "bob@example.test", " spaced pw ")


def test_user_add_generates_a_password_and_prints_it_once(data_dir: Path, cli: Cli) -> None:
    result = cli("user", "add", "carol@example.test")
    assert result.returncode == 0
    assert result.stderr == ""
    [password] = GENERATED.findall(result.stdout)
    assert len(password) >= 20
    assert result.stdout.count(password) == 1
    assert password_works(data_dir, "carol@example.test", password)
    other = GENERATED.findall(cli.ok("user", "add", "dave@example.test"))
    assert other != [password]


def test_user_add_with_a_quota(data_dir: Path, cli: Cli) -> None:
    cli.ok("user", "add", "a@example.test", "--password", "pw", "--quota", "1G")
    cli.ok("user", "add", "b@example.test", "--password", "pw", "--quota", "none")
    listing = cli.ok("user", "list").splitlines()
    assert listing[0].startswith("a@example.test ")
    assert "quota=1G" in listing[0]
    assert listing[1].startswith("b@example.test ")
    assert "quota=unlimited" in listing[1]


def test_user_add_errors(data_dir: Path, cli: Cli) -> None:
    cli.ok("user", "add", "a@example.test", "--password", "pw")
    assert "already exists" in cli.fails("user", "add", "a@example.test", "--password", "pw")
    assert "unknown domain nowhere.test" in cli.fails(
        "user", "add", "a@nowhere.test", "--password", "pw"
    )
    assert "invalid size '10 parsecs'" in cli.fails(
        "user", "add", "b@example.test", "--password", "pw", "--quota", "10 parsecs"
    )
    assert "not both" in cli.fails(
        "user", "add", "b@example.test", "--password", "pw", "--password-stdin", stdin="pw\n"
    )
    assert "no password on standard input" in cli.fails(
        "user", "add", "b@example.test", "--password-stdin", stdin=""
    )
    assert "must not be empty" in cli.fails("user", "add", "b@example.test", "--password", "")
    assert cli.ok("user", "list").split()[0] == "a@example.test"
    assert len(cli.ok("user", "list").splitlines()) == 1


@pytest.mark.parametrize(
    "address",
    [
        "nobody",
        "a@",
        "@example.test",
        "a b@example.test",
        '"quoted"@example.test',
        "a..b@example.test",
        ".a@example.test",
        "a@b@example.test",
        "a@bad_domain.test",
        "x" * 65 + "@example.test",
        "a%b@example.test",
        "a!b@example.test",
    ],
)
def test_malformed_addresses_are_refused(data_dir: Path, cli: Cli, address: str) -> None:
    if address in ("a%b@example.test", "a!b@example.test"):
        # RFC 5322 atext allows % and ! in a local part; the store keeps them literally, and
        # the SMTP front-end refuses %-hack and bang-path relaying (DESIGN §7).
        cli.ok("user", "add", address, "--password", "pw")
        return
    assert "invalid address" in cli.fails("user", "add", address, "--password", "pw")


def test_user_passwd(data_dir: Path, cli: Cli) -> None:
    cli.ok("user", "add", "a@example.test", "--password", "old")
    cli.ok("user", "passwd", "a@example.test", "--password-stdin", stdin="new\n")
    assert password_works(data_dir, "a@example.test", "new")
    assert not password_works(data_dir, "a@example.test", "old")
    cli.ok("user", "passwd", "a@example.test", "--password", "newer")
    assert password_works(data_dir, "a@example.test", "newer")
    [generated] = GENERATED.findall(cli.ok("user", "passwd", "a@example.test"))
    assert password_works(data_dir, "a@example.test", generated)
    assert "nobody@example.test" in cli.fails(
        "user", "passwd", "nobody@example.test", "--password", "x"
    )


def test_user_remove(data_dir: Path, cli: Cli) -> None:
    cli.ok("user", "add", "a@example.test", "--password", "pw")
    assert cli.ok("user", "remove", "a@example.test") == "removed user a@example.test\n"
    assert cli.ok("user", "list") == ""
    assert "a@example.test" in cli.fails("user", "remove", "a@example.test")


def test_user_quota(data_dir: Path, cli: Cli) -> None:
    cli.ok("user", "add", "a@example.test", "--password", "pw")
    assert cli.ok("user", "quota", "a@example.test", "500M") == "quota of a@example.test: 500M\n"
    assert "quota=500M" in cli.ok("user", "list")
    cli.ok("user", "quota", "a@example.test", "none")
    assert "quota=unlimited" in cli.ok("user", "list")
    cli.ok("user", "quota", "a@example.test", "2G")
    cli.ok("user", "quota", "a@example.test", "0")
    assert "quota=unlimited" in cli.ok("user", "list")
    assert "invalid size" in cli.fails("user", "quota", "a@example.test", "1.5G")
    assert "no such user" in cli.fails("user", "quota", "b@example.test", "1G")


# -- aliases ------------------------------------------------------------------------------------


def test_aliases(data_dir: Path, cli: Cli) -> None:
    cli.ok("user", "add", "a@example.test", "--password", "pw")
    cli.ok("alias", "add", "Info@Example.Test", "a@example.test", "Someone@Remote.Test")
    cli.ok("alias", "add", "@example.test", "a@example.test")
    assert cli.ok("alias", "list").splitlines() == [
        "@example.test -> a@example.test",
        "Info@example.test -> a@example.test, Someone@remote.test",
    ]
    cli.ok("alias", "remove", "@example.test")
    assert cli.ok("alias", "list").splitlines() == [
        "Info@example.test -> a@example.test, Someone@remote.test"
    ]


def test_alias_errors(data_dir: Path, cli: Cli) -> None:
    cli.ok("alias", "add", "info@example.test", "a@remote.test")
    assert "unknown domain other.test" in cli.fails("alias", "add", "x@other.test", "a@remote.test")
    assert "invalid address 'not-an-address'" in cli.fails(
        "alias", "add", "x@example.test", "not-an-address"
    )
    assert "invalid domain" in cli.fails("alias", "add", "@bad_domain", "a@remote.test")
    assert "Missing argument 'TARGETS...'" in cli.fails("alias", "add", "x@example.test")
    assert "already exists" in cli.fails("alias", "add", "info@example.test", "b@remote.test")
    assert "x@example.test" in cli.fails("alias", "remove", "x@example.test")


# -- status and generic behaviour ---------------------------------------------------------------


def test_status(data_dir: Path, cli: Cli) -> None:
    cli.ok("user", "add", "a@example.test", "--password", "pw")
    cli.ok("user", "add", "b@example.test", "--password", "pw")
    cli.ok("alias", "add", "@example.test", "a@example.test")
    lines = cli.ok("status").splitlines()
    assert "domains: 1" in lines
    assert "users: 2" in lines
    assert "aliases: 1" in lines
    assert "mailboxes: 12" in lines  # six special-use mailboxes per account
    assert any(line.startswith("messages: 0") for line in lines)
    assert any(re.fullmatch(r"store size: \d+ bytes .*", line) for line in lines)
    listeners = {line.split()[0]: line for line in lines if line.startswith("  ")}
    registry = default_registry()
    for name in ("smtp", "pop3", "http"):
        state = ["built"] if name in registry else ["not", "built", "yet"]
        assert listeners[name].split()[2:] == state
    assert "(implicit TLS)" in listeners["imaps"]


def test_status_shows_listeners_turned_off(data_dir: Path, cli: Cli) -> None:
    config = data_dir / "postoffice.toml"
    config.write_text(config.read_text().replace('pop3 = "127.0.0.1:1110"', 'pop3 = "off"'))
    listeners = {
        line.split()[0]: line for line in cli.ok("status").splitlines() if line[:2] == "  "
    }
    assert listeners["pop3"].split() == ["pop3", "off"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "Missing command"),
        (["user"], "Missing command"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["user", "add"], "Missing argument 'ADDRESS'"),
        (["user", "add", "a@example.test", "--bogus"], "--bogus"),
        (["serve", "--workers", "0"], "--workers"),
        (["serve", "--log-format", "xml"], "--log-format"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(
    data_dir: Path, cli: Cli, args: list[str], fragment: str
) -> None:
    message = assert_one_error_line(cli(*args), code=2)
    assert fragment in message
    assert "--help" in message


def test_help_and_version(cli: Cli) -> None:
    assert "serve" in cli.ok("--help")
    assert "--password-stdin" in cli.ok("user", "add", "--help")
    assert "version" in cli.ok("--version")
