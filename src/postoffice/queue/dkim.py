"""DKIM signing of outbound mail (RFC 6376) with dkimpy, and the keys under DATA/dkim/.

A key is the file `DATA/dkim/<domain>.<selector>.key` (mode 0600): PEM for RSA, the
base64 seed for Ed25519 (RFC 8463), the forms dkimpy reads.  `generate_key` writes one and
returns the TXT record to publish at `<selector>._domainkey.<domain>`.

Signing happens in the queue worker, just before a message goes out, not at enqueue:
- the queue keeps exactly the bytes that were accepted, so a key generated, rotated or
  withdrawn while mail waits applies to it, and nothing signed ever sits on disk twice;
- the submission client's 250 is not held up by an RSA signature (~17 ms of pure Python);
  the worker signs in a thread, once per message per run, whatever the number of
  destination domains (a retry signs again, with a fresh t=).
Only mail from our own users is signed: the envelope sender's domain must be local (an
unauthenticated client may not use one, DESIGN §7, and submission checks From: against the
user), and d= is the From: domain, which must be local and have a key (DMARC alignment).
"""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from postoffice.delivery.pipeline import from_addresses

Algorithm = Literal["ed25519", "rsa"]
RSA_BITS = 2048
# RFC 6376 §5.4.1 and what large receivers expect; dkimpy's default set, minus nothing.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
)


@dataclass(frozen=True, slots=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: Algorithm
    private: bytes  # as dkimpy reads it

    def sign(self, raw: bytes) -> bytes:
        """`raw` with a DKIM-Signature field in front (relaxed/relaxed)."""
        header = dkim.sign(
            raw,
            self.selector.encode(),
            self.domain.encode(),
            self.private,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=(
                b"ed25519-sha256" if self.algorithm == "ed25519" else b"rsa-sha256"
            ),
            include_headers=[h for h in SIGNED_HEADERS if _has_header(raw, h)],
        )
        return bytes(header) + raw


def key_folder(data_dir: Path) -> Path:
    return data_dir / "dkim"


def generate_key(data_dir: Path, domain: str, selector: str, algorithm: Algorithm) -> str:
    """Create `DATA/dkim/<domain>.<selector>.key` (0600, never overwritten) and return the
    TXT record for `<selector>._domainkey.<domain>`; raises FileExistsError."""
    folder = key_folder(data_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{domain}.{selector}.key"
    if algorithm == "ed25519":
        private_ed = ed25519.Ed25519PrivateKey.generate()
        secret = base64.b64encode(
            private_ed.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )
        public = private_ed.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    else:
        private_rsa = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        secret = private_rsa.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = private_rsa.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(secret)
        file.flush()
        os.fsync(file.fileno())
    return txt_record(algorithm, public)


def txt_record(algorithm: Algorithm, public: bytes) -> str:
    # RFC 6376 §3.6.1; RFC 8463 §4.2 for k=ed25519 (the raw 32-byte key).
    return f"v=DKIM1; k={algorithm}; p={base64.b64encode(public).decode('ascii')}"


def find_key(data_dir: Path, domain: str) -> DkimKey | None:
    """The newest key for `domain` (several selectors: the last generated one signs)."""
    folder = key_folder(data_dir)
    prefix = f"{domain.lower()}."
    try:
        candidates = [p for p in folder.iterdir() if p.name.lower().startswith(prefix)]
    except FileNotFoundError:
        return None
    candidates = [p for p in candidates if p.suffix == ".key" and p.name.count(".") >= 2]
    if not candidates:
        return None
    path = max(candidates, key=lambda p: p.stat().st_mtime_ns)
    selector = path.name[len(prefix) : -len(".key")]
    private = path.read_bytes()
    algorithm: Algorithm = "rsa" if private.startswith(b"-----BEGIN") else "ed25519"
    return DkimKey(domain.lower(), selector, algorithm, private)


def signing_domain(raw: bytes) -> str | None:
    """The From: domain d= must align with (DMARC), when there is exactly one author."""
    addresses = from_addresses(raw)
    if addresses is None or len(addresses) != 1:
        return None
    return addresses[0].rpartition("@")[2].lower() or None


async def sign_off_loop(key: DkimKey, raw: bytes) -> bytes:
    return await asyncio.to_thread(key.sign, raw)


def _has_header(raw: bytes, name: bytes) -> bool:
    end = raw.find(b"\r\n\r\n")
    head = raw[: end + 2] if end >= 0 else raw
    return any(
        line.split(b":", 1)[0].strip().lower() == name
        for line in head.split(b"\r\n")
        if line[:1] not in (b" ", b"\t")
    )
