"""Password hashing (argon2id) and stored SCRAM-SHA-256 keys (DESIGN §7, §10).

Everything here is CPU-bound and synchronous on purpose: callers on the event loop run
`verify_password` through `asyncio.to_thread` (see `authenticator.py`).
"""

from __future__ import annotations

import base64
import binascii

import argon2
from argon2.exceptions import InvalidHashError, VerificationError
from scramp import ScramException, ScramMechanism

# Argon2id at the OWASP minimum (19 MiB, t=2, p=1).  argon2-cffi's defaults (64 MiB, t=3) cost
# ~300 ms per login here; these measured a median of 19.8 ms (max 28.4 ms over 20 runs) per
# verify on this 2-core machine, inside the 50 ms budget, and bound memory per concurrent
# verify to 19 MiB.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_COST_KIB = 19456
ARGON2_PARALLELISM = 1

# RFC 7677 §4 asks for at least 4096 iterations.  10000 costs ~2.4 ms here to derive, a cost
# every SCRAM client pays once per login, so it stays modest.
SCRAM_ITERATIONS = 10000
SCRAM_MECHANISM = "SCRAM-SHA-256"

# A PasswordHasher holds only its parameters and is never mutated: a constant, not state.
_HASHER = argon2.PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_COST_KIB,
    parallelism=ARGON2_PARALLELISM,
    type=argon2.Type.ID,
)


def hash_password(password: str) -> str:
    """Return an argon2id PHC string (`$argon2id$v=19$m=...`) with a fresh random salt."""
    return _HASHER.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """Check `password` against `stored_hash`; a corrupt or foreign hash is just a mismatch."""
    try:
        return _HASHER.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True when the hash was made with other parameters (or is unreadable) and should be
    replaced at the next successful login."""
    try:
        return _HASHER.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True


def scram_sha256_record(password: str) -> str:
    """Derive the keys SCRAM-SHA-256 needs and return them as the store keeps them:
    `"salt_b64,stored_key_b64,server_key_b64,iterations"`.

    Raises ValueError when SASLprep (RFC 4013) forbids a character of the password: such a
    password can still be used with PLAIN/LOGIN, but never with SCRAM.
    """
    try:
        salt, stored_key, server_key, iterations = ScramMechanism(SCRAM_MECHANISM).make_auth_info(
            password, iteration_count=SCRAM_ITERATIONS
        )
    except ScramException as e:
        raise ValueError(f"password cannot be used with SCRAM: {e}") from e
    fields = (_b64(salt), _b64(stored_key), _b64(server_key), str(iterations))
    return ",".join(fields)


def parse_scram_record(s: str) -> tuple[bytes, bytes, bytes, int]:
    """Split a stored SCRAM record into (salt, stored_key, server_key, iterations).

    Raises ValueError on a malformed record.
    """
    parts = s.split(",")
    if len(parts) != 4:
        raise ValueError("SCRAM record must have 4 comma-separated fields")
    salt_b64, stored_b64, server_b64, iterations_text = parts
    try:
        salt, stored_key, server_key = (
            base64.b64decode(p, validate=True) for p in (salt_b64, stored_b64, server_b64)
        )
    except binascii.Error as e:
        raise ValueError(f"SCRAM record has invalid base64: {e}") from e
    if not iterations_text.isascii() or not iterations_text.isdigit():
        raise ValueError("SCRAM record iteration count is not a number")
    iterations = int(iterations_text)
    # RFC 7677 §4: fewer than 4096 iterations is not SCRAM-SHA-256 as specified.
    if iterations < 4096:
        raise ValueError("SCRAM record iteration count is below 4096")
    if not salt or not stored_key or not server_key:
        raise ValueError("SCRAM record has an empty field")
    return salt, stored_key, server_key, iterations


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
