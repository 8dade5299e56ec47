"""`postoffice sieve`: the admin's view of users' Sieve scripts, as a subprocess."""

from __future__ import annotations

from pathlib import Path

from conftest import Cli, set_config

USER = "alice@example.test"
VACATION = (
    'require ["vacation", "fileinto"];\r\n'
    'if header :contains "subject" "spam" { fileinto "Junk"; }\r\n'
    'vacation :days 3 "Away until Monday.";\r\n'
)


def add_user(cli: Cli) -> None:
    cli.ok("user", "add", USER, "--password", "secret-password")


def test_put_list_get_activate_deactivate_remove(data_dir: Path, cli: Cli) -> None:
    add_user(cli)
    script = data_dir / "away.sieve"
    script.write_bytes(VACATION.encode())
    assert "stored script 'away'" in cli.ok("sieve", "put", USER, "away", str(script))
    assert "stored script 'plain'" in cli.ok("sieve", "put", USER, "plain", "-", stdin="keep;\n")
    assert cli.ok("sieve", "list", USER) == "away\nplain\n"
    assert cli.ok("sieve", "get", USER, "away") == VACATION.replace("\r\n", "\n")

    cli.ok("sieve", "activate", USER, "away")
    assert cli.ok("sieve", "list", USER) == "away  active\nplain\n"
    assert "active" in cli.fails("sieve", "remove", USER, "away")

    cli.ok("sieve", "deactivate", USER)
    assert cli.ok("sieve", "list", USER) == "away\nplain\n"
    cli.ok("sieve", "remove", USER, "away")
    assert cli.ok("sieve", "list", USER) == "plain\n"


def test_put_refuses_an_invalid_script(data_dir: Path, cli: Cli) -> None:
    add_user(cli)
    error = cli.fails("sieve", "put", USER, "bad", "-", stdin="frobnicate;\n")
    assert "invalid script: line 1" in error
    assert "not UTF-8" in cli.fails("sieve", "put", USER, "bad", str(_latin1(data_dir)))
    assert cli.ok("sieve", "list", USER) == ""


def _latin1(data_dir: Path) -> Path:
    path = data_dir / "latin1.sieve"
    path.write_bytes(b"# caf\xe9\nkeep;\n")
    return path


def test_put_enforces_the_limits(data_dir: Path, cli: Cli) -> None:
    set_config(data_dir, "sieve", "max_scripts", "2")
    set_config(data_dir, "sieve", "max_script_size", '"64"')
    add_user(cli)
    cli.ok("sieve", "put", USER, "one", "-", stdin="keep;\n")
    cli.ok("sieve", "put", USER, "two", "-", stdin="keep;\n")
    assert "2 scripts" in cli.fails("sieve", "put", USER, "three", "-", stdin="keep;\n")
    # Replacing an existing script is not a new one.
    cli.ok("sieve", "put", USER, "two", "-", stdin="discard;\n")
    assert "too large" in cli.fails("sieve", "put", USER, "one", "-", stdin="#" * 70 + "\nkeep;\n")


def test_errors_are_one_line(data_dir: Path, cli: Cli) -> None:
    add_user(cli)
    assert "no such user" in cli.fails("sieve", "list", "nobody@example.test")
    assert "no script 'missing'" in cli.fails("sieve", "get", USER, "missing")
    assert "no script" in cli.fails("sieve", "activate", USER, "missing")
    assert "no script" in cli.fails("sieve", "remove", USER, "missing")
    assert "control characters" in cli.fails("sieve", "put", USER, "a\tb", "-", stdin="keep;\n")
    assert "FILE" in cli.fails("sieve", "put", USER, "x", str(data_dir / "absent.sieve"))
