"""TLS for every listener: the self-signed certificate made at `init` and the server context.

DESIGN §7: TLS everywhere; a self-signed certificate until the admin points the config at a
real one.  Errors in the certificate or key files surface as one `TlsConfigError` naming the
file, at startup rather than at the first handshake.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from postoffice.files import write_atomic

SELF_SIGNED_VALIDITY = dt.timedelta(days=3650)

# TLS 1.2 suites: ECDHE for forward secrecy, AEAD only (Mozilla "intermediate", without the
# DHE suites that would need DH parameters).  TLS 1.3 suites are not configurable here and
# OpenSSL's defaults for them are all good.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)

_MIN_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TlsConfigError(Exception):
    """The TLS configuration cannot be used; `path` is the file at fault, if any."""

    def __init__(self, path: Path | None, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path is not None else reason)
        self.path = path
        self.reason = reason


def generate_self_signed(hostname: str, cert_path: Path, key_path: Path) -> None:
    """Write a new EC P-256 key and a self-signed certificate for `hostname` (10 years).

    Each file is replaced atomically; the key is created with mode 0600 from the start, so
    it is never readable by others, not even for an instant.
    """
    if not hostname:
        raise ValueError("hostname must not be empty")
    key = ec.generate_private_key(ec.SECP256R1())
    # RFC 5280 §4.1.2.6: a CN is at most 64 characters; the SAN is what clients check anyway.
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "postoffice self-signed")]
    if len(hostname) <= 64:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, hostname))
    name = x509.Name(attributes)
    now = dt.datetime.now(dt.UTC)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Backdated a day so a client whose clock runs slow still accepts it.
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        # RFC 6125 §6.4.4: clients match the name against the SAN, not the CN.
        .add_extension(x509.SubjectAlternativeName([_general_name(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(key_path, key_pem, 0o600)
    write_atomic(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def build_server_context(
    cert_path: Path, key_path: Path, min_version: str = "TLSv1.2"
) -> ssl.SSLContext:
    """A server-side context for `cert_path` (leaf first, then any chain) and `key_path`.

    Raises TlsConfigError for an unknown `min_version` or a missing, unreadable, malformed,
    encrypted or mismatched certificate/key.
    """
    version = _MIN_VERSIONS.get(min_version)
    if version is None:
        raise TlsConfigError(
            None, f"unknown TLS minimum version {min_version!r} (use one of {list(_MIN_VERSIONS)})"
        )
    _check_pair(cert_path, key_path)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 8996 and RFC 9325 §3.1.1: nothing older than TLS 1.2.
    context.minimum_version = version
    # RFC 9325 §3.3: compression enables CRIME-style attacks.  Renegotiation is a DoS lever
    # no mail client needs.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_ciphers(TLS12_CIPHERS)
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as e:
        # Both files parsed and match; what is left is OpenSSL's policy (e.g. a weak key).
        raise TlsConfigError(cert_path, f"rejected by OpenSSL: {e.reason or e}") from e
    return context


def _check_pair(cert_path: Path, key_path: Path) -> None:
    # OpenSSL's errors for these cases name neither the file nor the problem clearly, so the
    # files are checked here first.
    try:
        certificates = x509.load_pem_x509_certificates(_read(cert_path))
    except ValueError as e:
        raise TlsConfigError(cert_path, "no valid PEM certificate in the file") from e
    try:
        key = serialization.load_pem_private_key(_read(key_path), password=None)
    except TypeError as e:
        raise TlsConfigError(
            key_path, "private key is encrypted; passphrases are not supported"
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TlsConfigError(key_path, "no valid PEM private key in the file") from e
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != certificates[0].public_key().public_bytes(*spki):
        raise TlsConfigError(key_path, f"private key does not match the certificate {cert_path}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise TlsConfigError(path, "file not found") from e
    except IsADirectoryError as e:
        raise TlsConfigError(path, "is a directory, not a file") from e
    except PermissionError as e:
        raise TlsConfigError(path, "permission denied") from e
    except OSError as e:
        raise TlsConfigError(path, f"cannot read: {e.strerror or e}") from e


def _general_name(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        # x509 carries A-labels only (RFC 5280 §7.2).
        return x509.DNSName(hostname.encode("idna").decode("ascii"))
