"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3): examples, invalid forms, round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.imap import utf7


@pytest.mark.parametrize(
    ("decoded", "encoded"),
    [
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
        ("&", "&-"),
        ("A&B", "A&-B"),
        ("", ""),
        ("INBOX", "INBOX"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("\x7f", "&AH8-"),  # DEL is not printable: shifted
        ("\t", "&AAk-"),
        ("😀", "&2D3eAA-"),  # a surrogate pair in UTF-16
        ("ü&ü", "&APw-&-&APw-"),
    ],
)
def test_examples(decoded: str, encoded: str) -> None:
    assert utf7.encode(decoded) == encoded
    assert utf7.decode(encoded) == decoded


@pytest.mark.parametrize(
    "bad",
    [
        "&",  # unterminated
        "&Jjo",  # unterminated
        "&Jjo!-",  # not base64
        "&AGE-",  # "a" shifted: printable ASCII must be itself
        "&ACY-",  # "&" shifted instead of "&-"
        "&AOk-&AOk-",  # two adjacent shifts: one is canonical
        "&AOl-",  # non-zero padding bits
        "&AOk=-",  # padding
        "&AO/-",  # "/" instead of ","
        "&AA-",  # one byte: odd UTF-16
        "&2D0-",  # lone high surrogate
        "a\tb",  # control character not encoded
        "été",  # 8-bit not encoded
        "&A-",  # one base64 character is no byte at all
    ],
)
def test_invalid(bad: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the contract is exactly ValueError
        utf7.decode(bad)


_NAMES = st.text(st.characters(codec="utf-8"))


@given(_NAMES)
def test_round_trip(name: str) -> None:
    encoded = utf7.encode(name)
    assert encoded.isascii()
    assert all(" " <= ch <= "~" for ch in encoded)
    assert utf7.decode(encoded) == name


@given(st.text(alphabet="&-AZaz09+,/= ü"))
def test_decode_is_strict_inverse(text: str) -> None:
    """Whatever decode accepts, encode gives back exactly (one spelling per name)."""
    try:
        name = utf7.decode(text)
    except ValueError:
        return
    assert utf7.encode(name) == text
