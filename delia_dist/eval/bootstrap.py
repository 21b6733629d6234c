"""Percentile bootstrap intervals for the format-task scores.

A few dozen held-out examples give wide intervals; printing them next to each score is
what keeps a 0.05 difference from being read as a result. Resampling is over examples,
with a fixed seed, so the same outputs always give the same interval."""
from __future__ import annotations

import random

from .metrics import format_scores_from_rows

METRICS = ("accuracy", "f1", "well_formed")


def bootstrap_intervals(rows: list[dict], n_boot: int = 1000, level: float = 0.95,
                        seed: int = 0) -> dict[str, tuple[float, float]]:
    """{metric: (low, high)} over `rows` as returned by metrics.format_scores
    ({"prediction", "gold", "correct"}); empty when there are no rows."""
    if not rows:
        return {}
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {m: [] for m in METRICS}
    for _ in range(n_boot):
        sample = [rows[rng.randrange(len(rows))] for _ in rows]
        scores = format_scores_from_rows(sample)
        for m in METRICS:
            draws[m].append(scores[m])
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    out = {}
    for m, values in draws.items():
        values.sort()
        out[m] = (values[int(lo_q * (n_boot - 1))], values[int(round(hi_q * (n_boot - 1)))])
    return out
