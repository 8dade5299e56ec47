"""The Bayesian spam probability of a message from its tokens' trained counts (pure).

Gary Robinson's method, as SpamBayes refined it ("A Statistical Approach to the Spam
Problem", Linux Journal 2003): each token's spam probability is Graham's ratio of
frequencies, pulled towards 0.5 when the token is rare (Robinson's f(w) with strength s = 1
and assumed probability x = 0.5); the tokens furthest from 0.5 are combined with Fisher's
method, a chi-square test run once for "spammy" and once for "hammy", so that a message with
strong evidence both ways scores near 0.5 (unsure) instead of being forced to one side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

STRENGTH: Final = 1.0  # Robinson's s: how much weight the assumed probability has
ASSUMED: Final = 0.5  # Robinson's x: the probability of a token never seen before
MIN_DEVIATION: Final = 0.1  # tokens with |f(w) - 0.5| below this say nothing
MAX_CLUES: Final = 150


@dataclass(frozen=True, slots=True)
class Score:
    probability: float  # 0 (ham) .. 1 (spam)
    clues: tuple[tuple[str, float], ...]  # the tokens used, strongest first, with f(w)


def token_probability(spam: int, ham: int, spam_total: int, ham_total: int) -> float:
    """Robinson's f(w) for a token seen in `spam` of `spam_total` spam and `ham` of
    `ham_total` ham messages."""
    spam_ratio = spam / spam_total if spam_total else 0.0
    ham_ratio = ham / ham_total if ham_total else 0.0
    if spam_ratio + ham_ratio == 0.0:
        return ASSUMED
    graham = spam_ratio / (spam_ratio + ham_ratio)
    seen = spam + ham
    return (STRENGTH * ASSUMED + seen * graham) / (STRENGTH + seen)


def chi2_survival(chi2: float, degrees: int) -> float:
    """P(X >= chi2) for X chi-square distributed with an even number of degrees of freedom
    (the closed form as a finite series)."""
    half = chi2 / 2.0
    term = math.exp(-half)
    total = term
    for i in range(1, degrees // 2):
        term *= half / i
        total += term
    return min(total, 1.0)


def classify(counts: Mapping[str, tuple[int, int]], spam_total: int, ham_total: int) -> Score:
    """Combine the most telling tokens' f(w) with Fisher's method (Robinson/SpamBayes)."""
    clues = []
    for token, (spam, ham) in counts.items():
        probability = token_probability(spam, ham, spam_total, ham_total)
        if abs(probability - ASSUMED) >= MIN_DEVIATION:
            clues.append((token, probability))
    # Ties broken by token so that the same message always gets the same score.
    clues.sort(key=lambda clue: (-abs(clue[1] - ASSUMED), clue[0]))
    chosen = tuple(clues[:MAX_CLUES])
    if not chosen:
        return Score(ASSUMED, ())
    degrees = 2 * len(chosen)
    spamminess = 1.0 - chi2_survival(-2.0 * sum(math.log1p(-p) for _, p in chosen), degrees)
    hamminess = 1.0 - chi2_survival(-2.0 * sum(math.log(p) for _, p in chosen), degrees)
    return Score((spamminess - hamminess + 1.0) / 2.0, chosen)
