"""IMAP modified UTF-7 mailbox names (RFC 3501 §5.1.3), both directions.

Hand-written because Python's "utf-7" codec is RFC 2152 UTF-7: it shifts with "+", uses "/"
in base64 and accepts forms IMAP forbids.  Decoding is strict: a name is accepted only in
its one canonical encoding, so two spellings can never name the same mailbox.
"""

from __future__ import annotations

import base64
import binascii


def _printable(ch: str) -> bool:
    return " " <= ch <= "~"


def _shift(run: list[str]) -> str:
    data = "".join(run).encode("utf-16-be", "surrogatepass")
    return "&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-"


def encode(name: str) -> str:
    """`name` in modified UTF-7: printable ASCII as itself ("&" as "&-"), the rest as
    "&" + base64 of UTF-16BE with "," for "/" and no padding + "-"."""
    out: list[str] = []
    run: list[str] = []
    for ch in name:
        if _printable(ch):
            if run:
                out.append(_shift(run))
                run = []
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    if run:
        out.append(_shift(run))
    return "".join(out)


def decode(name: str) -> str:
    """The mailbox name that `name` encodes; ValueError unless `name` is canonical modified
    UTF-7 (only printable ASCII, every "&" closed by "-", valid UTF-16 without lone
    surrogates, no shifted printable ASCII, no split or padded base64)."""
    out: list[str] = []
    i = 0
    n = len(name)
    while i < n:
        ch = name[i]
        if not _printable(ch):
            raise ValueError(f"character {ch!r} must be encoded")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated '&' shift")
        chunk = name[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            if "/" in chunk or "=" in chunk:
                raise ValueError("'/' or '=' in a shifted sequence")
            try:
                data = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
            except binascii.Error as exc:
                raise ValueError(f"bad base64 in {chunk!r}") from exc
            if len(data) % 2:
                raise ValueError("odd number of UTF-16 bytes")
            out.append(data.decode("utf-16-be"))  # strict: lone surrogates raise
        i = end + 1
    text = "".join(out)
    # RFC 3501 §5.1.3 allows exactly one spelling: shifted printable ASCII, adjacent shifts,
    # non-zero padding bits and "&" shifts of nothing but "&" all fail to re-encode the same.
    if encode(text) != name:
        raise ValueError(f"{name!r} is not in canonical modified UTF-7")
    return text
