"""The format task's scores with their 95% bootstrap intervals, one row per run, and a
plain reading of them: a difference counts only when the intervals do not overlap."""
from __future__ import annotations

TASK = "eval/format"
COLUMNS = (("accuracy", "accuracy"), ("f1", "F1"), ("well_formed", "well-formed"))


def _align_key(row: dict) -> str | None:
    keys = sorted(k for k in row if k.startswith("align/") and k.endswith("/l0") and "/json/" in k)
    return keys[0] if keys else None


def has_intervals(results: list[dict]) -> bool:
    return any(f"{TASK}/accuracy_lo" in r for r in results)


def interval_table(results: list[dict]) -> str:
    header = ["run", "steps", "diverse_share"] + [f"{label} [95% CI]" for _, label in COLUMNS] + \
             ["d(<sep>,json)_l0", "time_s"]
    rows = [header]
    for r in results:
        cells = [r["run"], str(r.get("steps", "-")),
                 f"{r['diverse_share']:.2f}" if isinstance(r.get("diverse_share"), float) else "-"]
        for key, _ in COLUMNS:
            k = f"{TASK}/{key}"
            cells.append(f"{r[k]:.3f} [{r[k + '_lo']:.3f}, {r[k + '_hi']:.3f}]" if k + "_lo" in r else "-")
        a = _align_key(r)
        cells += [f"{r[a]:.3f}" if a else "-", f"{r['wall_s']:.0f}" if "wall_s" in r else "-"]
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compare(a: dict, b: dict, metric: str = "accuracy") -> str:
    """'above' / 'below' when a's interval lies wholly above / below b's, else 'overlap'."""
    k = f"{TASK}/{metric}"
    if a[k + "_lo"] > b[k + "_hi"]:
        return "above"
    if a[k + "_hi"] < b[k + "_lo"]:
        return "below"
    return "overlap"


def reading(results: list[dict], n_examples: int | None = None, baseline: str = "baseline",
            base: str = "base") -> list[str]:
    """One sentence per comparison, from the intervals alone (no threshold tuned to the data)."""
    rows = {r["run"]: r for r in results if f"{TASK}/accuracy_lo" in r}
    out = []
    n = f" on {n_examples} held-out examples" if n_examples else ""
    if base in rows and baseline in rows:
        how = compare(rows[baseline], rows[base])
        out.append(f"{baseline} vs the untrained model ({base}){n}: accuracy {rows[base][f'{TASK}/accuracy']:.3f} -> "
                   f"{rows[baseline][f'{TASK}/accuracy']:.3f}, well-formed {rows[base][f'{TASK}/well_formed']:.3f} -> "
                   f"{rows[baseline][f'{TASK}/well_formed']:.3f}; "
                   + ("the baseline is better beyond the 95% intervals." if how == "above" else
                      "the baseline is worse beyond the 95% intervals." if how == "below" else
                      "the intervals overlap: no difference shown."))
    for name, r in rows.items():
        if name in (base, baseline) or baseline not in rows:
            continue
        how = compare(r, rows[baseline])
        diff = r[f"{TASK}/accuracy"] - rows[baseline][f"{TASK}/accuracy"]
        out.append(f"{name} vs {baseline}: accuracy {diff:+.3f}; "
                   + (f"{name} is better beyond the 95% intervals." if how == "above" else
                      f"{name} is worse beyond the 95% intervals." if how == "below" else
                      "the intervals overlap: no difference shown at this scale."))
    for name, r in rows.items():  # each equal-steps control against the run whose steps it matched
        ref = r.get("steps_from")
        if ref not in rows:
            continue
        how = compare(rows[ref], r)
        diff = rows[ref][f"{TASK}/accuracy"] - r[f"{TASK}/accuracy"]
        out.append(f"{ref} vs {name} (its equal-steps control, {r.get('steps', '?')} optimizer steps each): "
                   f"accuracy {diff:+.3f}; "
                   + (f"{ref} is better beyond the 95% intervals: more than extra steps." if how == "above" else
                      f"{ref} is worse beyond the 95% intervals: the extra steps alone did better." if how == "below"
                      else "the intervals overlap: not shown to be more than extra steps."))
    return out
