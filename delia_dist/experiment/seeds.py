"""Runs repeated over seeds, summarised per matrix entry: the mean of each metric with a
Student-t interval over the seeds, beside the per-example bootstrap interval.

With 2-3 seeds a bootstrap over seeds can only return the range of the values it was
given; the t interval widens with few seeds, as it should."""
from __future__ import annotations

import math

LEVEL = 0.95
METHOD = (f"interval over seeds: Student t {LEVEL:.0%} interval of the mean over the n seeds, "
          f"mean +- t(0.975, n-1) s / sqrt(n); per-example: the {LEVEL:.0%} percentile bootstrap over the "
          "held-out examples, computed per seed, its bounds averaged over the seeds")


def _t_cdf(x: float, df: int) -> float:
    """P(T <= x) for x >= 0, by the regularised incomplete beta's continued fraction."""
    z = df / (df + x * x)
    a, b = df / 2, 0.5
    # Lentz's continued fraction for I_z(a, b) (Numerical Recipes' betacf).
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * z / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * z / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * z / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(z) + b * math.log1p(-z))
    return 1 - 0.5 * front * h / a


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom, by bisection."""
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def seed_interval(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high); one value gives no interval: (v, v, v)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(1 - (1 - level) / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _metric_keys(rows: list[dict]) -> list[str]:
    keys = {k for r in rows for k, v in r.items()
            if (k.startswith(("eval/", "align/")) or k in ("train_loss_last", "steps"))
            and isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith(("_lo", "_hi"))}
    return sorted(k for k in keys if all(k in r for r in rows))


def seed_rows(results: list[dict]) -> list[dict]:
    """One row per matrix entry run with seeds: {group, n_seeds, seeds, K: mean, K_seed_lo,
    K_seed_hi, and where the runs have a bootstrap interval K_lo / K_hi: its bounds averaged},
    in the order the groups first appear."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        if "seed" in r and r.get("status", "ok") == "ok":
            groups.setdefault(r.get("group", r["run"]), []).append(r)
    out = []
    for group, rows in groups.items():
        row = {"run": group, "group": group, "n_seeds": len(rows), "seeds": [r["seed"] for r in rows]}
        for k in _metric_keys(rows):
            row[k], row[k + "_seed_lo"], row[k + "_seed_hi"] = seed_interval([float(r[k]) for r in rows])
            if all(k + "_lo" in r and k + "_hi" in r for r in rows):
                row[k + "_lo"] = sum(r[k + "_lo"] for r in rows) / len(rows)
                row[k + "_hi"] = sum(r[k + "_hi"] for r in rows) / len(rows)
        out.append(row)
    return out


def _label(key: str) -> str:
    return key.removeprefix("eval/").replace("/", " ")


def seed_table(results: list[dict], markdown: bool = False) -> str:
    """Mean [interval over seeds] (per-example bootstrap, averaged) per group and eval metric."""
    rows = seed_rows(results)
    if not rows:
        return ""
    from .tables import EVAL_LABELS  # the headline metrics; every metric's seed summary is in results.json
    present = [k for k in _metric_keys(rows) if k.startswith("eval/")]
    metrics = [k for k in EVAL_LABELS if k in present] or present
    header = ["run", "seeds", "steps"] + [f"{_label(k)} mean [seeds] (per-example)" for k in metrics]
    body = []
    for r in rows:
        cells = [r["group"], str(r["n_seeds"]), f"{r['steps']:.0f}" if "steps" in r else "-"]
        for k in metrics:
            cell = f"{r[k]:.3f} [{r[k + '_seed_lo']:.3f}, {r[k + '_seed_hi']:.3f}]"
            if k + "_lo" in r:
                cell += f" ({r[k + '_lo']:.3f}, {r[k + '_hi']:.3f})"
            cells.append(cell)
        body.append(cells)
    if markdown:
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(c) + " |" for c in body])
    widths = [max(len(x[i]) for x in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
