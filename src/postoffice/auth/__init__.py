"""The auth core every protocol shares: password hashing, SASL, login throttling (DESIGN §7)."""

from postoffice.auth.authenticator import (
    AuthCancelled,
    Authenticator,
    AuthFailure,
    AuthMalformed,
    AuthResult,
    AuthSuccess,
    AuthThrottled,
    AuthUnsupported,
    CredentialsLookup,
)
from postoffice.auth.passwords import (
    hash_password,
    needs_rehash,
    parse_scram_record,
    scram_sha256_record,
    verify_password,
)
from postoffice.auth.sasl import (
    MECHANISMS,
    SaslCancelled,
    SaslError,
    SaslSyntaxError,
    decode_sasl_response,
    encode_challenge,
    mechanisms_offered,
)
from postoffice.auth.throttle import LoginThrottle, ThrottleConfig, ThrottleDecision

__all__ = [
    "MECHANISMS",
    "AuthCancelled",
    "AuthFailure",
    "AuthMalformed",
    "AuthResult",
    "AuthSuccess",
    "AuthThrottled",
    "AuthUnsupported",
    "Authenticator",
    "CredentialsLookup",
    "LoginThrottle",
    "SaslCancelled",
    "SaslError",
    "SaslSyntaxError",
    "ThrottleConfig",
    "ThrottleDecision",
    "decode_sasl_response",
    "encode_challenge",
    "hash_password",
    "mechanisms_offered",
    "needs_rehash",
    "parse_scram_record",
    "scram_sha256_record",
    "verify_password",
]
