"""The comparison as text: which columns a set of runs has, the terminal table (narrowed to
fit), and the markdown table of report.md. Also the naming rules the plots share (metric
labels, alignment keys, which metrics are better lower)."""
from __future__ import annotations

import re

# Single-word labels keep the terminal table easy to read and to parse with awk.
EVAL_LABELS = {"eval/translation/bleu": "BLEU", "eval/translation/chrf": "chrF", "eval/translation/bleurt": "BLEURT",
               "eval/format/accuracy": "fmt_acc", "eval/format/f1": "fmt_F1",
               "eval/format/well_formed": "well_formed", "eval/format/format_token_loss": "fmt_tok_loss"}
ALIGN = re.compile(r"^align/(?P<token>[^/]+)/(?P<keyword>.+)/l(?P<layer>\d+)$")


def norm(results: list[dict]) -> list[dict]:
    """Metric names as MLflow stores them ('<sep>' -> '_sep_'), whatever the row came from."""
    from ..tracking import clean_name
    return [{clean_name(k) if isinstance(k, str) else k: v for k, v in r.items()} for r in results]


def token_label(name: str) -> str:
    """'_sep_' (MLflow's spelling of '<sep>') back to '<sep>' for people."""
    m = re.fullmatch(r"_(\w+)_", name)
    return f"<{m.group(1)}>" if m else name


def _fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"


def lower_is_better(key: str) -> bool:
    return any(w in key for w in ("loss", "distance", "ppl", "perplexity", "error"))


def source_names(results: list[dict], histories: dict) -> list[str]:
    keys = {k for r in results for k in r} | {k for h in histories.values() for k in h}
    names = {k.split("/", 1)[1] for k in keys if k.startswith(("loss/", "tokens/")) and k.count("/") == 1}
    return sorted(names, key=lambda s: (s != "downstream", s))


def _columns(results: list[dict], histories: dict) -> list[tuple[str, str]]:
    """(row key, label) of every column some run has a value for."""
    present = {k for r in results for k in r}
    cols = [("run", "run"), ("steps", "steps"), ("diverse_share", "diverse_share")]
    if any(k.startswith("tokens/") for k in present):
        cols.append(("tokens_total_m", "Mtok"))
        cols += [(f"tokens/{s}_m", f"Mtok_{s}") for s in source_names(results, histories)
                 if f"tokens/{s}" in present]
    cols.append(("train_loss_last", "train_loss"))
    evals = [k for k in EVAL_LABELS if k in present]
    evals += sorted(k for k in present if k.startswith("eval/") and k not in EVAL_LABELS
                    and not k.startswith("eval/best/") and not k.endswith(("_lo", "_hi")))  # intervals: interval_table
    for k in evals:
        label = EVAL_LABELS.get(k, k.removeprefix("eval/"))
        cols.append((k, label))
        best = f"eval/best/{k.removeprefix('eval/')}"
        if any(best in r and r[best] != r.get(k) for r in results):
            cols.append((best, f"best_{label}"))
    aligns = sorted((k for k in present if ALIGN.match(k)), key=lambda k: int(ALIGN.match(k)["layer"]))
    if aligns:  # first and last layer of each (token, keyword) pair: the table stays narrow
        first, last = int(ALIGN.match(aligns[0])["layer"]), int(ALIGN.match(aligns[-1])["layer"])
        for k in sorted(aligns):
            m = ALIGN.match(k)
            if int(m["layer"]) in (first, last):
                cols.append((k, f"d({token_label(m['token'])},{m['keyword']})_l{m['layer']}"))
    cols += [(k, label) for k, label in (("wall_s", "time_s"), ("gpu_hours", "gpu_h")) if k in present]
    return [(k, label) for k, label in cols if any(k in r for r in results) or k == "run"]


def with_derived(results: list[dict]) -> list[dict]:
    out = []
    for r in results:
        r = dict(r)
        toks = {k: v for k, v in r.items() if k.startswith("tokens/") and isinstance(v, (int, float))}
        if toks:
            r["tokens_total_m"] = sum(toks.values()) / 1e6
            r.update({f"{k}_m": v / 1e6 for k, v in toks.items()})
        out.append(r)
    return out


def _drop_rank(key: str, label: str, first_align: str | None) -> int:
    """Which columns leave a too-wide terminal table first (higher goes first): the
    headline metrics stay, the detail is in report.md."""
    if key in ("run", "steps", "diverse_share", "train_loss_last", "wall_s") or key in EVAL_LABELS:
        return 0
    if key == first_align:
        return 1
    if key.startswith("eval/best/"):
        return 2
    if key.startswith("tokens"):
        return 3
    if ALIGN.match(key):
        return 4
    return 5  # other eval metrics (per-task extras)


def terminal_width() -> int:
    """Width to print the table in: the terminal's (160 when not a terminal), at least 120."""
    import shutil
    return max(120, shutil.get_terminal_size((160, 24)).columns)


def comparison_table(results: list[dict], histories: dict | None = None, max_width: int | None = None) -> str:
    """Aligned plain-text table; a missing value is '-' so columns always split cleanly.

    max_width: drop detail columns (extra eval metrics, then alignment beyond the first
    pair, token counts, best-so-far) until the table fits, and say which were left out."""
    results = with_derived(norm(results))
    cols = _columns(results, histories or {})

    def render(cols):
        rows = [[label for _, label in cols]] + [[_fmt(r[k]) if k in r else "-" for k, _ in cols] for r in results]
        widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
        lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return lines

    lines, dropped = render(cols), []
    if max_width:
        first_align = next((k for k, _ in cols if ALIGN.match(k)), None)
        order = sorted(((k, label) for k, label in cols if _drop_rank(k, label, first_align) > 0),
                       key=lambda c: -_drop_rank(c[0], c[1], first_align))
        while order and max(map(len, lines)) > max_width:
            dropped.append(order.pop(0))
            lines = render([c for c in cols if c not in dropped])
    if dropped:
        lines.append(f"({len(dropped)} more columns in report.md: {', '.join(label for _, label in dropped)})")
    return "\n".join(lines)


def markdown_table(results: list[dict], histories: dict) -> str:
    cols = _columns(results, histories)
    out = ["| " + " | ".join(label for _, label in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r[k]) if k in r else "-" for k, _ in cols) + " |" for r in results]
    return "\n".join(out)


