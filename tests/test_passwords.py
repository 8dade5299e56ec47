from __future__ import annotations

import base64

import argon2
import pytest
from scramp import ScramMechanism

from postoffice.auth.passwords import (
    ARGON2_MEMORY_COST_KIB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    SCRAM_ITERATIONS,
    hash_password,
    needs_rehash,
    parse_scram_record,
    scram_sha256_record,
    verify_password,
)


def test_parameters_are_the_tuned_ones() -> None:
    # The cost budget (< 50 ms per verify here) is met by these numbers, not by a timed test.
    assert (ARGON2_TIME_COST, ARGON2_MEMORY_COST_KIB, ARGON2_PARALLELISM) == (2, 19456, 1)
    assert SCRAM_ITERATIONS >= 4096


def test_hash_is_argon2id_phc_with_those_parameters() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("$argon2id$v=19$")
    params = argon2.extract_parameters(stored)
    assert params.type is argon2.Type.ID
    assert params.time_cost == ARGON2_TIME_COST
    assert params.memory_cost == ARGON2_MEMORY_COST_KIB
    assert params.parallelism == ARGON2_PARALLELISM


def test_hash_salts_differ() -> None:
    assert hash_password("same") != hash_password("same")


def test_verify_right_and_wrong() -> None:
    stored = hash_password("pässwörd ✓")
    assert verify_password(stored, "pässwörd ✓")
    assert not verify_password(stored, "pässwörd")
    assert not verify_password(stored, "")


@pytest.mark.parametrize(
    "corrupt",
    [
        "",
        "garbage",
        "$argon2id$v=19$m=19456,t=2,p=1$bm90YXNhbHQ$bm90YWhhc2g",
        "$argon2id$v=19$m=19456,t=2,p=1",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
        "{SHA512-CRYPT}$6$rounds=5000$salt$hash",
    ],
)
def test_verify_never_raises_on_corrupt_hash(corrupt: str) -> None:
    assert verify_password(corrupt, "password") is False


def test_needs_rehash() -> None:
    assert not needs_rehash(hash_password("pw"))
    # argon2-cffi's own defaults differ from ours: such a hash is upgraded on next login.
    assert needs_rehash(argon2.PasswordHasher().hash("pw"))
    assert needs_rehash(argon2.PasswordHasher(type=argon2.Type.I).hash("pw"))
    assert needs_rehash("not a hash")


def test_scram_record_round_trip_matches_scramp() -> None:
    record = scram_sha256_record("pencil")
    salt, stored_key, server_key, iterations = parse_scram_record(record)
    assert iterations == SCRAM_ITERATIONS
    expected = ScramMechanism("SCRAM-SHA-256").make_auth_info(
        "pencil", iteration_count=iterations, salt=salt
    )
    assert (salt, stored_key, server_key, iterations) == expected
    assert record.split(",")[0] == base64.b64encode(salt).decode()
    assert len(stored_key) == len(server_key) == 32


def test_scram_record_salts_differ() -> None:
    assert scram_sha256_record("pencil") != scram_sha256_record("pencil")


def test_scram_record_refuses_password_saslprep_forbids() -> None:
    with pytest.raises(ValueError, match="SCRAM"):
        scram_sha256_record("bell\x07")


@pytest.mark.parametrize(
    "record",
    [
        "",
        "a,b,c",
        "a,b,c,d,e",
        "!!!,c3RvcmVk,c2VydmVy,4096",
        "c2FsdA==,c3RvcmVk,c2VydmVy,many",
        "c2FsdA==,c3RvcmVk,c2VydmVy,-4096",
        "c2FsdA==,c3RvcmVk,c2VydmVy,4095",
        "c2FsdA==,,c2VydmVy,4096",
    ],
)
def test_parse_scram_record_rejects(record: str) -> None:
    with pytest.raises(ValueError, match="SCRAM record"):
        parse_scram_record(record)
