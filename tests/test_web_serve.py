"""The `http` listener in a real `postoffice serve`: HTTP/1.1 keep-alive, limits, timeouts."""

from __future__ import annotations

import contextlib
import http.client
import imaplib
import smtplib
import socket
import time
import urllib.request
from pathlib import Path

from conftest import Cli, ServeProcess, StartServe, set_config

ADDRESS = "alice@example.test"


def _raw(server: ServeProcess, request: bytes) -> bytes:
    """Send `request` on a fresh connection; everything the server answers before closing."""
    with socket.create_connection(server.address("http"), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_autoconfig_over_http(server: ServeProcess) -> None:
    host, port = server.address("http")
    url = f"http://{host}:{port}/mail/config-v1.1.xml?emailaddress={ADDRESS}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
        body = response.read()
    assert b"<hostname>mail.example.test</hostname>" in body
    server.wait_for(r"http GET /mail/config-v1\.1\.xml 200")


def test_two_requests_on_one_connection(server: ServeProcess) -> None:
    conn = http.client.HTTPConnection(*server.address("http"), timeout=10)
    try:
        conn.request("GET", f"/mail/config-v1.1.xml?emailaddress={ADDRESS}")
        first = conn.getresponse()
        assert first.status == 200
        first.read()
        sock = conn.sock
        conn.request("GET", "/mail/config-v1.1.xml?emailaddress=bob@other.test")
        second = conn.getresponse()
        assert second.status == 404
        second.read()
        assert conn.sock is sock  # no reconnection in between
    finally:
        conn.close()
    opened = [line for line in server.lines if "http connection open" in line]
    assert len(opened) == 1


def test_malformed_request_is_400(server: ServeProcess) -> None:
    answer = _raw(server, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"NOT HTTP" not in answer  # the client's bytes are not echoed back


def test_oversized_headers_are_431(server: ServeProcess) -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    assert _raw(server, request).startswith(b"HTTP/1.1 431 ")


def test_oversized_body_is_413(server: ServeProcess) -> None:
    request = (
        b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 99999999999\r\n\r\n"
    )
    assert _raw(server, request).startswith(b"HTTP/1.1 413 ")


def test_idle_keep_alive_is_closed(data_dir: Path, start_serve: StartServe) -> None:
    config = data_dir / "postoffice.toml"
    text = config.read_text()
    assert "http_idle_seconds = 60" in text
    config.write_text(text.replace("http_idle_seconds = 60", "http_idle_seconds = 0.5"))
    server = start_serve()
    with socket.create_connection(server.address("http"), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, nothing sent
        assert time.monotonic() - started < 5
    assert server.stop() == 0


def test_metrics_count_connections_deliveries_and_failed_logins(
    cli: Cli, data_dir: Path, start_serve: StartServe
) -> None:
    set_config(data_dir, "http", "metrics_token", '"s3cret"')
    cli.ok("user", "add", ADDRESS, "--password-stdin", stdin="correct horse\n")
    server = start_serve()
    with smtplib.SMTP(*server.address("smtp"), timeout=10) as smtp:
        smtp.sendmail(
            "someone@remote.test", [ADDRESS, "nobody@example.test"], b"Subject: hi\r\n\r\nhi\r\n"
        )
    with (
        imaplib.IMAP4(*server.address("imap"), timeout=10) as imap,
        contextlib.suppress(imaplib.IMAP4.error),
    ):
        imap.login(ADDRESS, "wrong password")
    conn = http.client.HTTPConnection(*server.address("http"), timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": "Bearer s3cret"})
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['postoffice_connections_accepted_total{listener="smtp"}'] == 1
    assert samples['postoffice_connections_accepted_total{listener="imap"}'] == 1
    assert samples['postoffice_connections_open{listener="http"}'] == 1  # this request
    assert samples['postoffice_deliveries_total{outcome="accepted"}'] == 1
    assert samples["postoffice_auth_failures_total"] == 1
