"""Client auto-configuration documents and the DNS records a domain needs, from the config.

Pure functions (config in, bytes or text out) so that each document can be checked without a
server.  Hand-written because each format is small and fixed, and no maintained library
writes them: Thunderbird's autoconfig (config-v1.1.xml), Microsoft's Autodiscover "POX"
response, an Apple configuration profile (plist), and the MX / SPF / DKIM / DMARC / CNAME /
SRV records of `postoffice dns records`.

Ports are those of the configured listeners, so a server still on its development ports
announces them; a listener turned off is left out of every document.
"""

from __future__ import annotations

import plistlib
import re
import uuid
import xml.etree.ElementTree as ET  # building only; nothing here parses XML
from dataclasses import dataclass
from typing import Final, Literal

from postoffice.config import Config, TcpAddress

Security = Literal["SSL", "STARTTLS"]
Protocol = Literal["imap", "pop3", "smtp"]

AUTODISCOVER_REQUEST_MAX: Final = 16 * 1024  # bytes; a real request is a few hundred
# Outlook's request names the address in one element; a pattern finds it without handing
# untrusted XML (entities, DTDs) to a parser.
_EMAIL_ELEMENT: Final = re.compile(rb"<(?:\w+:)?EMailAddress>\s*([^<\s]{3,320})\s*</", re.I)
_ADDRESS: Final = re.compile(r"[^@\s<>\"']{1,64}@[A-Za-z0-9.-]{1,253}")
# Mail clients look these services up (RFC 6186 §3, RFC 8314 §5.1); name → listener.
SRV_SERVICES: Final = (
    ("_submissions._tcp", "submissions"),
    ("_submission._tcp", "submission"),
    ("_imaps._tcp", "imaps"),
    ("_imap._tcp", "imap"),
    ("_pop3s._tcp", "pop3s"),
    ("_pop3._tcp", "pop3"),
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    protocol: Protocol
    port: int
    security: Security


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What a mail application needs: one host name and the endpoints, preferred first
    (implicit TLS before STARTTLS, RFC 8314 §3)."""

    hostname: str
    endpoints: tuple[Endpoint, ...]

    def of(self, protocol: Protocol) -> list[Endpoint]:
        return [e for e in self.endpoints if e.protocol == protocol]


# (listener, protocol, security) in order of preference.
_LISTENERS: Final[tuple[tuple[str, Protocol, Security], ...]] = (
    ("imaps", "imap", "SSL"),
    ("imap", "imap", "STARTTLS"),
    ("pop3s", "pop3", "SSL"),
    ("pop3", "pop3", "STARTTLS"),
    ("submissions", "smtp", "SSL"),
    ("submission", "smtp", "STARTTLS"),
)


def client_settings(config: Config) -> ClientSettings:
    ports = {
        listener.name: listener.address.port
        for listener in config.enabled_listeners()
        if isinstance(listener.address, TcpAddress)
    }
    endpoints = tuple(
        Endpoint(protocol, ports[name], security)
        for name, protocol, security in _LISTENERS
        if name in ports
    )
    return ClientSettings(config.server.hostname, endpoints)


def parse_address(text: str) -> str | None:
    """`text` lower-cased if it looks like local@domain, else None."""
    text = text.strip()
    return text.lower() if _ADDRESS.fullmatch(text) else None


# -- Thunderbird ---------------------------------------------------------------------------------


def thunderbird_config(settings: ClientSettings, domain: str) -> bytes:
    """config-v1.1.xml as Thunderbird's autoconfig reads it (wiki.mozilla.org/Thunderbird:
    Autoconfiguration:ConfigFileFormat); the user name is the whole address."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = f"{domain} mail"
    ET.SubElement(provider, "displayShortName").text = domain
    for endpoint in settings.endpoints:
        if endpoint.protocol == "smtp":
            server = ET.SubElement(provider, "outgoingServer", type="smtp")
        else:
            server = ET.SubElement(provider, "incomingServer", type=endpoint.protocol)
        ET.SubElement(server, "hostname").text = settings.hostname
        ET.SubElement(server, "port").text = str(endpoint.port)
        ET.SubElement(server, "socketType").text = endpoint.security
        ET.SubElement(server, "username").text = "%EMAILADDRESS%"
        ET.SubElement(server, "authentication").text = "password-cleartext"
    return _xml(root)


# -- Microsoft Autodiscover (POX) ----------------------------------------------------------------

_AUTODISCOVER_NS: Final = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
_OUTLOOK_NS: Final = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)


def autodiscover_address(request: bytes) -> str | None:
    """The EMailAddress of an Autodiscover POX request, or None."""
    match = _EMAIL_ELEMENT.search(request[:AUTODISCOVER_REQUEST_MAX])
    return parse_address(match[1].decode("utf-8", "replace")) if match else None


def autodiscover_response(settings: ClientSettings, address: str) -> bytes:
    """The Outlook POX response (MS-OXDSCLI §2.2.4): one Protocol element per endpoint,
    SSL on for implicit TLS, Encryption=TLS for STARTTLS."""
    root = ET.Element("Autodiscover", xmlns=_AUTODISCOVER_NS)
    response = ET.SubElement(root, "Response", xmlns=_OUTLOOK_NS)
    user = ET.SubElement(response, "User")
    ET.SubElement(user, "DisplayName").text = address
    account = ET.SubElement(response, "Account")
    ET.SubElement(account, "AccountType").text = "email"
    ET.SubElement(account, "Action").text = "settings"
    for endpoint in settings.endpoints:
        protocol = ET.SubElement(account, "Protocol")
        ET.SubElement(protocol, "Type").text = endpoint.protocol.upper()
        ET.SubElement(protocol, "Server").text = settings.hostname
        ET.SubElement(protocol, "Port").text = str(endpoint.port)
        ET.SubElement(protocol, "LoginName").text = address
        ET.SubElement(protocol, "DomainRequired").text = "off"
        ET.SubElement(protocol, "SPA").text = "off"
        if endpoint.security == "SSL":
            ET.SubElement(protocol, "SSL").text = "on"
        else:
            ET.SubElement(protocol, "SSL").text = "off"
            ET.SubElement(protocol, "Encryption").text = "TLS"
        ET.SubElement(protocol, "AuthRequired").text = "on"
        if endpoint.protocol == "smtp":
            ET.SubElement(protocol, "UsePOPAuth").text = "on"
    return _xml(root)


# -- Apple configuration profile -----------------------------------------------------------------


def mobileconfig(settings: ClientSettings, address: str) -> bytes | None:
    """An unsigned configuration profile with one IMAP account and its SMTP server, or None
    when IMAP or submission is off.  No password inside: the device asks for it.

    The UUIDs derive from the address, so downloading the profile again replaces the
    installed one instead of adding a second account.
    """
    imap, smtp = settings.of("imap"), settings.of("smtp")
    if not imap or not smtp:
        return None
    domain = address.rpartition("@")[2]
    identifier = ".".join(reversed(domain.split(".")))
    account = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.postoffice.mail.{address}",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{address}#account")).upper(),
        "PayloadDisplayName": address,
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": address,
        "IncomingMailServerHostName": settings.hostname,
        "IncomingMailServerPortNumber": imap[0].port,
        # Apple Mail upgrades to STARTTLS by itself when UseSSL is false.
        "IncomingMailServerUseSSL": imap[0].security == "SSL",
        "IncomingMailServerUsername": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": settings.hostname,
        "OutgoingMailServerPortNumber": smtp[0].port,
        "OutgoingMailServerUseSSL": smtp[0].security == "SSL",
        "OutgoingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.postoffice.{address}",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{address}")).upper(),
        "PayloadDisplayName": f"Mail for {address}",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile)


# -- DNS ------------------------------------------------------------------------------------------


def dns_records(config: Config, domain: str, dkim: str | None) -> list[str]:
    """Zone-file lines for `domain`; `dkim` is the DKIM TXT line when a key exists, else a
    comment says how to make one."""
    host = f"{config.server.hostname}."
    zone = f"{domain}."
    lines = [
        f"{zone} IN MX 10 {host}",
        f'{zone} IN TXT "v=spf1 mx -all"',
    ]
    if dkim is None:
        lines.append(f"; no DKIM key yet: run `postoffice dkim generate {domain}`")
    else:
        lines.append(dkim)
    lines += [
        f'_dmarc.{zone} IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"',
        f"autoconfig.{zone} IN CNAME {host}",
        f"autodiscover.{zone} IN CNAME {host}",
    ]
    ports = {
        listener.name: listener.address.port
        for listener in config.enabled_listeners()
        if isinstance(listener.address, TcpAddress)
    }
    for service, listener in SRV_SERVICES:
        if listener in ports:
            # RFC 6186 §3: priority 0, weight 1 for the one server.
            lines.append(f"{service}.{zone} IN SRV 0 1 {ports[listener]} {host}")
        else:
            # RFC 6186 §3.4: target "." says the service is not offered.
            lines.append(f"{service}.{zone} IN SRV 0 0 0 .")
    return lines


def _xml(root: ET.Element) -> bytes:
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
