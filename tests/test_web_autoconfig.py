"""The auto-configuration documents and /metrics, through the ASGI app.

httpx's ASGITransport (what Starlette's TestClient wraps) is used directly so that the app
runs on the test's own event loop, the one the store was opened on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import plistlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from postoffice.config import Config, HttpConfig, TcpAddress, load_config
from postoffice.context import open_context
from postoffice.web.app import build_app

HOST = "mail.example.test"
ADDRESS = "alice@example.test"
AUTODISCOVER_REQUEST = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>%s</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""
OUTLOOK = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
THUNDERBIRD_PATHS = ("/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml")


def _config(data_dir: Path, token: str = "", **listeners: TcpAddress | None) -> Config:
    config = load_config(data_dir).with_listeners(listeners)
    return dataclasses.replace(config, http=HttpConfig(metrics_token=token))


@contextlib.asynccontextmanager
async def _client(data_dir: Path, config: Config) -> AsyncIterator[httpx.AsyncClient]:
    ctx = await open_context(data_dir, config)
    try:
        transport = httpx.ASGITransport(app=build_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c
    finally:
        await ctx.close()


@pytest.fixture
async def client(data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(data_dir, _config(data_dir, token="s3cret")) as c:
        yield c


def _parse(response: httpx.Response) -> ET.Element:
    return ET.fromstring(response.content)  # noqa: S314 (our own server's document)


def _assert_security_headers(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", THUNDERBIRD_PATHS)
async def test_thunderbird_autoconfig(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, params={"emailaddress": ADDRESS})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    _assert_security_headers(response)
    provider = _parse(response).find("emailProvider")
    assert provider is not None
    assert provider.get("id") == "example.test"
    servers = [
        (
            s.tag,
            s.get("type"),
            s.findtext("hostname"),
            s.findtext("port"),
            s.findtext("socketType"),
            s.findtext("username"),
            s.findtext("authentication"),
        )
        for s in provider
        if s.tag in ("incomingServer", "outgoingServer")
    ]
    common = ("%EMAILADDRESS%", "password-cleartext")
    assert servers == [
        ("incomingServer", "imap", HOST, "1993", "SSL", *common),
        ("incomingServer", "imap", HOST, "1143", "STARTTLS", *common),
        ("incomingServer", "pop3", HOST, "1995", "SSL", *common),
        ("incomingServer", "pop3", HOST, "1110", "STARTTLS", *common),
        ("outgoingServer", "smtp", HOST, "5465", "SSL", *common),
        ("outgoingServer", "smtp", HOST, "5587", "STARTTLS", *common),
    ]


async def test_thunderbird_autoconfig_domain_from_the_host(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/mail/config-v1.1.xml", headers={"host": "autoconfig.example.test"}
    )
    assert response.status_code == 200
    assert b'<emailProvider id="example.test">' in response.content


async def test_listeners_turned_off_are_left_out(data_dir: Path) -> None:
    config = _config(data_dir, pop3=None, pop3s=None, imap=TcpAddress("127.0.0.1", 143))
    async with _client(data_dir, config) as client:
        response = await client.get(THUNDERBIRD_PATHS[0], params={"emailaddress": ADDRESS})
    root = _parse(response)
    incoming = [(s.get("type"), s.findtext("port")) for s in root.iter("incomingServer")]
    assert incoming == [("imap", "1993"), ("imap", "143")]


@pytest.mark.parametrize(
    "query",
    [
        {"emailaddress": "alice@other.test"},
        {"emailaddress": "not an address"},
        {},  # and the Host (testserver) is no local domain either
    ],
)
async def test_thunderbird_unknown_domain_is_404(
    client: httpx.AsyncClient, query: dict[str, str]
) -> None:
    response = await client.get(THUNDERBIRD_PATHS[1], params=query)
    assert response.status_code == 404
    _assert_security_headers(response)


@pytest.mark.parametrize(
    "path", ["/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"]
)
async def test_autodiscover_post(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(path, content=AUTODISCOVER_REQUEST % ADDRESS.encode())
    assert response.status_code == 200
    _assert_security_headers(response)
    account = _parse(response).find(f"{OUTLOOK}Response/{OUTLOOK}Account")
    assert account is not None
    assert account.findtext(f"{OUTLOOK}AccountType") == "email"
    assert account.findtext(f"{OUTLOOK}Action") == "settings"
    protocols = [
        (
            p.findtext(f"{OUTLOOK}Type"),
            p.findtext(f"{OUTLOOK}Server"),
            p.findtext(f"{OUTLOOK}Port"),
            p.findtext(f"{OUTLOOK}SSL"),
            p.findtext(f"{OUTLOOK}Encryption"),
            p.findtext(f"{OUTLOOK}LoginName"),
        )
        for p in account.iter(f"{OUTLOOK}Protocol")
    ]
    assert protocols == [
        ("IMAP", HOST, "1993", "on", None, ADDRESS),
        ("IMAP", HOST, "1143", "off", "TLS", ADDRESS),
        ("POP3", HOST, "1995", "on", None, ADDRESS),
        ("POP3", HOST, "1110", "off", "TLS", ADDRESS),
        ("SMTP", HOST, "5465", "on", None, ADDRESS),
        ("SMTP", HOST, "5587", "off", "TLS", ADDRESS),
    ]


async def test_autodiscover_get(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/autodiscover/autodiscover.xml", params={"emailaddress": "Alice@Example.Test"}
    )
    assert response.status_code == 200
    assert f"<LoginName>{ADDRESS}</LoginName>".encode() in response.content


@pytest.mark.parametrize(
    "body",
    [
        AUTODISCOVER_REQUEST % b"alice@other.test",
        b"<Autodiscover/>",
        AUTODISCOVER_REQUEST % ADDRESS.encode() + b" " * 20_000,  # over the size limit
    ],
)
async def test_autodiscover_refusals(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/autodiscover/autodiscover.xml", content=body)
    assert response.status_code == 404


async def test_mobileconfig(client: httpx.AsyncClient) -> None:
    response = await client.get("/mobileconfig", params={"emailaddress": ADDRESS})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-apple-aspen-config"
    assert "attachment" in response.headers["content-disposition"]
    _assert_security_headers(response)
    profile = plistlib.loads(response.content)
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadVersion"] == 1
    [account] = profile["PayloadContent"]
    assert account["PayloadType"] == "com.apple.mail.managed"
    assert account["EmailAccountType"] == "EmailTypeIMAP"
    assert account["EmailAddress"] == ADDRESS
    assert (
        account["IncomingMailServerHostName"],
        account["IncomingMailServerPortNumber"],
        account["IncomingMailServerUseSSL"],
    ) == (HOST, 1993, True)
    assert (
        account["OutgoingMailServerHostName"],
        account["OutgoingMailServerPortNumber"],
        account["OutgoingMailServerUseSSL"],
    ) == (HOST, 5465, True)
    assert not any(
        "password" in key.lower() and key != "OutgoingPasswordSameAsIncomingPassword"
        for key in account
    )
    again = plistlib.loads((await client.get(response.request.url)).content)
    assert again["PayloadUUID"] == profile["PayloadUUID"]  # replaces, never duplicates


async def test_mobileconfig_unknown_domain_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/mobileconfig", params={"emailaddress": "bob@other.test"})
    assert response.status_code == 404


async def test_metrics_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 401
    wrong = await client.get("/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    response = await client.get("/metrics", headers={"authorization": "Bearer s3cret"})
    assert response.status_code == 200
    _assert_security_headers(response)
    samples = {
        line.split()[0]: float(line.split()[1])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples["postoffice_store_domains"] == 1
    assert samples["postoffice_queue_pending_messages"] == 0
    assert "postoffice_auth_failing_ips" in samples


async def test_metrics_off_without_token(data_dir: Path) -> None:
    async with _client(data_dir, _config(data_dir, token="")) as client:
        response = await client.get("/metrics", headers={"authorization": "Bearer "})
    assert response.status_code == 404
