"""Comparators and match types (RFC 5228 §2.7, RFC 4790, RFC 5231): pure string matching.

`:matches` is not translated into a regular expression: a pattern such as "*a*a*a*b" makes
Python's backtracking engine take exponential time, and a script's author could stall
delivery with one.  The matcher below is a dynamic programme over bitsets (one Python int
per pattern position, one bit per text position), linear in the pattern times the text.
"""

from __future__ import annotations

import re
import string
from typing import Final

_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_LEADING_DIGITS: Final = re.compile(r"[0-9]*")
_NOT_MARK: Final = re.compile("[^\x01]")

STAR: Final = object()
QUESTION: Final = object()


def fold(value: str, comparator: str) -> str:
    """The form the comparator compares: i;ascii-casemap maps only ASCII letters."""
    return value.translate(_ASCII_LOWER) if comparator == "i;ascii-casemap" else value


def _numeric(value: str) -> int | None:
    """RFC 4790 §9.1.1: the leading digits' value; None (positive infinity) without any."""
    digits = _LEADING_DIGITS.match(value)
    return int(digits.group()) if digits and digits.group() else None


def order(value: str, key: str, comparator: str) -> int:
    """-1, 0 or 1 as `value` sorts before, with or after `key` (RFC 5231 relations)."""
    if comparator == "i;ascii-numeric":
        left, right = _numeric(value), _numeric(key)
        if left is None or right is None:
            return (left is None) - (right is None)
        return (left > right) - (left < right)
    left_text, right_text = fold(value, comparator), fold(key, comparator)
    return (left_text > right_text) - (left_text < right_text)


def relation_holds(relation: str, ordering: int) -> bool:
    match relation.lower():
        case "gt":
            return ordering > 0
        case "ge":
            return ordering >= 0
        case "lt":
            return ordering < 0
        case "le":
            return ordering <= 0
        case "eq":
            return ordering == 0
        case _:  # "ne"; script.py refused anything else
            return ordering != 0


def is_equal(value: str, key: str, comparator: str) -> bool:
    return order(value, key, comparator) == 0


def contains(value: str, key: str, comparator: str) -> bool:
    return fold(key, comparator) in fold(value, comparator)


def _pattern(key: str) -> list[object]:
    """The pattern's items: STAR, QUESTION or one literal character ("\\" quotes the next)."""
    items: list[object] = []
    escaped = False
    for char in key:
        if escaped:
            items.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "*":
            items.append(STAR)
        elif char == "?":
            items.append(QUESTION)
        else:
            items.append(char)
    return items


def _positions(text: str, char: str) -> int:
    """Bit i set where text[i] == char, built by C-speed string operations."""
    marked = _NOT_MARK.sub("0", text[::-1].replace(char, "\x01")).replace("\x01", "1")
    return int(marked or "0", 2)


def matches(value: str, key: str, comparator: str) -> list[str] | None:
    """RFC 5228 §2.7.1 :matches; on success the text of each wildcard, in order, for the match
    variables (RFC 5229 §3.2: each wildcard takes as little as it can, left to right)."""
    items = _pattern(fold(key, comparator))
    text = fold(value, comparator)
    length = len(text)
    # can[i]: bit j set when items[i:] matches text[j:]
    can = [0] * (len(items) + 1)
    can[len(items)] = 1 << length
    below_end = (1 << length) - 1
    masks: dict[str, int] = {}
    for index in range(len(items) - 1, -1, -1):
        item, after = items[index], can[index + 1]
        if item is STAR:
            can[index] = (1 << after.bit_length()) - 1 if after else 0
        elif item is QUESTION:
            can[index] = (after >> 1) & below_end
        else:
            assert isinstance(item, str)
            if item not in masks:
                masks[item] = _positions(text, item)
            can[index] = (after >> 1) & masks[item]
        if not can[index]:
            return None
    if not can[0] & 1:
        return None
    captured: list[str] = []
    position = 0
    for index, item in enumerate(items):
        if item is STAR:
            later = can[index + 1] >> position
            end = position + (later & -later).bit_length() - 1
            captured.append(value[position:end])
            position = end
        else:
            if item is QUESTION:
                captured.append(value[position])
            position += 1
    return captured
