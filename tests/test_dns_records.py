"""`postoffice dns records DOMAIN`: every record a mail domain needs, from the config."""

from __future__ import annotations

from pathlib import Path

from conftest import Cli

HOST = "mail.example.test."


def test_records_without_a_dkim_key(data_dir: Path, cli: Cli) -> None:
    lines = cli.ok("dns", "records", "Example.Test").splitlines()
    assert lines == [
        f"example.test. IN MX 10 {HOST}",
        'example.test. IN TXT "v=spf1 mx -all"',
        "; no DKIM key yet: run `postoffice dkim generate example.test`",
        '_dmarc.example.test. IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.test"',
        f"autoconfig.example.test. IN CNAME {HOST}",
        f"autodiscover.example.test. IN CNAME {HOST}",
        # The configured (here development) ports, RFC 6186 / RFC 8314.
        f"_submissions._tcp.example.test. IN SRV 0 1 5465 {HOST}",
        f"_submission._tcp.example.test. IN SRV 0 1 5587 {HOST}",
        f"_imaps._tcp.example.test. IN SRV 0 1 1993 {HOST}",
        f"_imap._tcp.example.test. IN SRV 0 1 1143 {HOST}",
        f"_pop3s._tcp.example.test. IN SRV 0 1 1995 {HOST}",
        f"_pop3._tcp.example.test. IN SRV 0 1 1110 {HOST}",
    ]


def test_records_with_dkim_keys(data_dir: Path, cli: Cli) -> None:
    for algorithm in ("rsa", "ed25519"):
        selector = f"s{algorithm}"
        published = cli.ok(
            "dkim", "generate", "example.test", "--selector", selector, "--algorithm", algorithm
        ).strip()
        lines = cli.ok("dns", "records", "example.test").splitlines()
        # The newest key signs, so that is the one to publish; same line `generate` printed.
        assert lines[2] == published
        assert lines[2].startswith(f"{selector}._domainkey.example.test. IN TXT")


def test_service_turned_off_is_published_as_absent(data_dir: Path, cli: Cli) -> None:
    config = data_dir / "postoffice.toml"
    config.write_text(config.read_text().replace('pop3 = "127.0.0.1:1110"', 'pop3 = "off"'))
    lines = cli.ok("dns", "records", "example.test").splitlines()
    # RFC 6186 §3.4: target "." means the service is not provided.
    assert "_pop3._tcp.example.test. IN SRV 0 0 0 ." in lines


def test_unknown_domain_is_refused(data_dir: Path, cli: Cli) -> None:
    assert "other.test" in cli.fails("dns", "records", "other.test")
