"""Paired statistics for every comparison a report makes: mean Δ, a 95 % t interval, an exact sign-flip p-value,
Holm's correction across the report's comparisons, and a verdict.

A comparison pairs runs of the same seed (same init outside the plan, same batches and augmentation),
so its unit is the per-seed difference. The sign-flip test asks how often flipping the signs of those
differences gives a mean at least as far from 0 as the observed one: exact (all 2^n flips) for n <= 20,
which needs no assumption about their distribution. Its smallest p-value is 2 / 2^n: with 5 seeds
0.0625, so fewer than 6 pairs can never show evidence at the 5 % level.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from typing import Any

ALPHA = 0.05
_EXACT_MAX_N = 20
_MONTE_CARLO_DRAWS = 200_000
# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (a series in 1/df beyond 30)."""
    if df < 1:
        raise ValueError("t quantile needs at least 1 degree of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def sign_flip_p(diffs: list[float]) -> float:
    """Two-sided p-value of the paired sign-flip test of mean 0 (exact up to 20 pairs, else 200,000 seeded draws)."""
    n = len(diffs)
    observed = abs(sum(diffs)) - 1e-9 * (1 + sum(abs(d) for d in diffs))  # ties count as extreme
    if n <= _EXACT_MAX_N:
        hits = sum(abs(sum(s * d for s, d in zip(signs, diffs))) >= observed
                   for signs in itertools.product((1, -1), repeat=n))
        return hits / 2**n
    rng = random.Random(0)
    hits = sum(abs(sum(d if rng.random() < 0.5 else -d for d in diffs)) >= observed for _ in range(_MONTE_CARLO_DRAWS))
    return (hits + 1) / (_MONTE_CARLO_DRAWS + 1)


def paired(diffs: list[float]) -> dict[str, Any]:
    """Mean of per-seed differences, its 95 % t interval and sign-flip p-value (None for both with one pair)."""
    n = len(diffs)
    mean = statistics.mean(diffs)
    if n < 2:
        return {"delta_mean": mean, "ci95": None, "p_value": None, "n": n}
    half = t975(n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return {"delta_mean": mean, "ci95": [mean - half, mean + half], "p_value": sign_flip_p(diffs), "n": n}


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values (None stays None and does not count as a comparison)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, out, running = len(order), [None] * len(p_values), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running  # type: ignore[call-overload]
    return out  # type: ignore[return-value]


def verdict(delta_mean: float, p_holm: float | None) -> str:
    """'gain' or 'harm' when the corrected p-value is below 5 %, else 'no evidence' (n/a with one pair)."""
    if p_holm is None:
        return "n/a (one seed)"
    if p_holm >= ALPHA:
        return "no evidence"
    return "gain" if delta_mean > 0 else "harm"


def correct(comparisons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The comparisons with `p_holm` (over all of them) and `verdict` added."""
    adjusted = holm([c["p_value"] for c in comparisons])
    return [{**c, "p_holm": p, "verdict": verdict(c["delta_mean"], p)} for c, p in zip(comparisons, adjusted)]
