from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from postoffice.tls import TlsConfigError, build_server_context, generate_self_signed

HOST = "mail.example.test"


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    generate_self_signed(HOST, cert, key)
    return cert, key


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_generated_files(pair: tuple[Path, Path]) -> None:
    cert_path, key_path = pair
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in cert_path.parent.iterdir()) == ["cert.pem", "key.pem"]
    cert = load_cert(cert_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= dt.timedelta(days=3650)
    assert cert.not_valid_before_utc < dt.datetime.now(dt.UTC)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


def test_generated_for_an_ip_literal(tmp_path: Path) -> None:
    generate_self_signed("192.0.2.25", tmp_path / "c.pem", tmp_path / "k.pem")
    san = load_cert(tmp_path / "c.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.25")]


def test_regenerating_replaces_both_files(pair: tuple[Path, Path]) -> None:
    cert_path, key_path = pair
    old_cert, old_key = cert_path.read_bytes(), key_path.read_bytes()
    generate_self_signed(HOST, cert_path, key_path)
    assert cert_path.read_bytes() != old_cert
    assert key_path.read_bytes() != old_key
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    build_server_context(cert_path, key_path)


async def handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> tuple[str | None, bytes]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await reader.readline())
            await writer.drain()
        except (ssl.SSLError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname=HOST
        )
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.compression() is None
            writer.write(b"EHLO client\r\n")
            line = await reader.readline()
            return ssl_object.version(), line
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_handshake_with_the_generated_certificate(pair: tuple[Path, Path]) -> None:
    cert_path, key_path = pair
    client = ssl.create_default_context(cafile=str(cert_path))
    version, line = await handshake(build_server_context(cert_path, key_path), client)
    assert version in ("TLSv1.2", "TLSv1.3")
    assert line == b"EHLO client\r\n"


async def test_handshake_tls12(pair: tuple[Path, Path]) -> None:
    client = ssl.create_default_context(cafile=str(pair[0]))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    version, _ = await handshake(build_server_context(*pair), client)
    assert version == "TLSv1.2"


async def test_handshake_below_the_minimum_fails(pair: tuple[Path, Path]) -> None:
    client = ssl.create_default_context(cafile=str(pair[0]))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    # The server's protocol_version alert arrives as either, depending on timing.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await handshake(build_server_context(*pair, min_version="TLSv1.3"), client)


async def test_handshake_with_a_ca_issued_chain(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert(HOST)
    cert_path, key_path = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key_path.write_bytes(leaf.private_key_pem.bytes())
    client = ssl.create_default_context()
    ca.configure_trust(client)
    _, line = await handshake(build_server_context(cert_path, key_path), client)
    assert line == b"EHLO client\r\n"


def test_context_settings(pair: tuple[Path, Path]) -> None:
    context = build_server_context(*pair)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(c["aead"] and c["kea"] == "kx-ecdhe" for c in tls12)


def test_missing_files(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    cert_path, key_path = pair
    with pytest.raises(TlsConfigError) as missing_cert:
        build_server_context(tmp_path / "nope.pem", key_path)
    assert missing_cert.value.path == tmp_path / "nope.pem"
    assert missing_cert.value.reason == "file not found"
    with pytest.raises(TlsConfigError) as missing_key:
        build_server_context(cert_path, tmp_path / "nokey.pem")
    assert missing_key.value.path == tmp_path / "nokey.pem"
    assert str(missing_key.value) == f"{tmp_path / 'nokey.pem'}: file not found"


def test_unreadable_file(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    with pytest.raises(TlsConfigError, match="is a directory") as error:
        build_server_context(tmp_path, pair[1])
    assert error.value.path == tmp_path


def test_garbage_files(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(TlsConfigError, match="no valid PEM certificate") as bad_cert:
        build_server_context(garbage, pair[1])
    assert bad_cert.value.path == garbage
    with pytest.raises(TlsConfigError, match="no valid PEM private key") as bad_key:
        build_server_context(pair[0], garbage)
    assert bad_key.value.path == garbage
    # A certificate where the key should be is a common mix-up.
    with pytest.raises(TlsConfigError, match="no valid PEM private key"):
        build_server_context(pair[0], pair[0])


def test_mismatched_key(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    other_cert, other_key = tmp_path / "other.pem", tmp_path / "other.key"
    generate_self_signed(HOST, other_cert, other_key)
    with pytest.raises(TlsConfigError, match="does not match") as error:
        build_server_context(pair[0], other_key)
    assert error.value.path == other_key


def test_encrypted_key(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    key = serialization.load_pem_private_key(pair[1].read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(TlsConfigError, match="encrypted"):
        build_server_context(pair[0], encrypted)


def test_key_too_weak_for_openssl(tmp_path: Path) -> None:
    # A matching pair, but a 1024-bit RSA key is below OpenSSL's default security level.
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = dt.datetime.now(dt.UTC)
    weak = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "weak.pem", tmp_path / "weak.key"
    cert_path.write_bytes(weak.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(TlsConfigError, match="rejected by OpenSSL") as error:
        build_server_context(cert_path, key_path)
    assert error.value.path == cert_path


@pytest.mark.parametrize("version", ["TLSv1.1", "SSLv3", "1.2", ""])
def test_bad_min_version(pair: tuple[Path, Path], version: str) -> None:
    with pytest.raises(TlsConfigError, match="unknown TLS minimum version") as error:
        build_server_context(*pair, min_version=version)
    assert error.value.path is None


def test_tls13_minimum(pair: tuple[Path, Path]) -> None:
    assert build_server_context(*pair, min_version="TLSv1.3").minimum_version == (
        ssl.TLSVersion.TLSv1_3
    )


def test_empty_hostname_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hostname"):
        generate_self_signed("", tmp_path / "c.pem", tmp_path / "k.pem")
