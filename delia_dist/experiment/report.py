"""Side-by-side comparison of runs: a terminal table, a markdown report and PNG plots.

Rows come either from MLflow (`build_report`, `delia report`) or from run directories
(`delia experiment`: metrics.jsonl per run). Plots are what people look at first: loss
per data source against training tokens, each eval metric against the diverse-data
share, and special-token distances over training steps.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

# Single-word labels keep the terminal table easy to read and to parse with awk.
EVAL_LABELS = {"eval/translation/bleu": "BLEU", "eval/translation/chrf": "chrF", "eval/translation/bleurt": "BLEURT",
               "eval/format/accuracy": "fmt_acc", "eval/format/f1": "fmt_F1",
               "eval/format/well_formed": "well_formed", "eval/format/format_token_loss": "fmt_tok_loss"}
_ALIGN = re.compile(r"^align/(?P<token>[^/]+)/(?P<keyword>.+)/l(?P<layer>\d+)$")
SUMMARY_TAG = "delia.kind"  # runs tagged delia.kind=report are reports, not training runs


def _norm(results: list[dict]) -> list[dict]:
    """Metric names as MLflow stores them ('<sep>' -> '_sep_'), whatever the row came from."""
    from ..tracking import clean_name
    return [{clean_name(k) if isinstance(k, str) else k: v for k, v in r.items()} for r in results]


def _token_label(name: str) -> str:
    """'_sep_' (MLflow's spelling of '<sep>') back to '<sep>' for people."""
    m = re.fullmatch(r"_(\w+)_", name)
    return f"<{m.group(1)}>" if m else name


def _fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"


def _lower_is_better(key: str) -> bool:
    return any(w in key for w in ("loss", "distance", "ppl", "perplexity", "error"))


def _sources(results: list[dict], histories: dict) -> list[str]:
    keys = {k for r in results for k in r} | {k for h in histories.values() for k in h}
    names = {k.split("/", 1)[1] for k in keys if k.startswith(("loss/", "tokens/")) and k.count("/") == 1}
    return sorted(names, key=lambda s: (s != "downstream", s))


def _columns(results: list[dict], histories: dict) -> list[tuple[str, str]]:
    """(row key, label) of every column some run has a value for."""
    present = {k for r in results for k in r}
    cols = [("run", "run"), ("steps", "steps"), ("diverse_share", "diverse_share")]
    if any(k.startswith("tokens/") for k in present):
        cols.append(("tokens_total_m", "Mtok"))
        cols += [(f"tokens/{s}_m", f"Mtok_{s}") for s in _sources(results, histories)
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
    aligns = sorted((k for k in present if _ALIGN.match(k)), key=lambda k: int(_ALIGN.match(k)["layer"]))
    if aligns:  # first and last layer of each (token, keyword) pair: the table stays narrow
        first, last = int(_ALIGN.match(aligns[0])["layer"]), int(_ALIGN.match(aligns[-1])["layer"])
        for k in sorted(aligns):
            m = _ALIGN.match(k)
            if int(m["layer"]) in (first, last):
                cols.append((k, f"d({_token_label(m['token'])},{m['keyword']})_l{m['layer']}"))
    cols += [(k, label) for k, label in (("wall_s", "time_s"), ("gpu_hours", "gpu_h")) if k in present]
    return [(k, label) for k, label in cols if any(k in r for r in results) or k == "run"]


def _with_derived(results: list[dict]) -> list[dict]:
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
    if _ALIGN.match(key):
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
    results = _with_derived(_norm(results))
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
        first_align = next((k for k, _ in cols if _ALIGN.match(k)), None)
        order = sorted(((k, label) for k, label in cols if _drop_rank(k, label, first_align) > 0),
                       key=lambda c: -_drop_rank(c[0], c[1], first_align))
        while order and max(map(len, lines)) > max_width:
            dropped.append(order.pop(0))
            lines = render([c for c in cols if c not in dropped])
    if dropped:
        lines.append(f"({len(dropped)} more columns in report.md: {', '.join(label for _, label in dropped)})")
    return "\n".join(lines)


def _markdown_table(results: list[dict], histories: dict) -> str:
    cols = _columns(results, histories)
    out = ["| " + " | ".join(label for _, label in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r[k]) if k in r else "-" for k, _ in cols) + " |" for r in results]
    return "\n".join(out)


def _history_from_run_dir(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    path = Path(run_dir) / "metrics.jsonl"
    hist: dict[str, list] = {}
    if not path.is_file():
        return hist
    from ..tracking import clean_name
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)):
                hist.setdefault(clean_name(k), []).append((int(rec.get("step", 0)), float(v)))
    return hist


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def _tokens_at(hist: dict, steps: list[int]) -> list[float] | None:
    """Total training tokens (all sources) at each step, interpolated between log steps."""
    import numpy as np
    series = [v for k, v in hist.items() if k.startswith("tokens/") and k.count("/") == 1 and v]
    if not series:
        return None
    total: dict[int, float] = {}
    for s in series:
        for step, v in s:
            total[step] = total.get(step, 0.0) + v
    xs, ys = zip(*sorted({0: 0.0, **total}.items()))
    if xs[-1] == 0:
        return None
    # Past the last log step, extrapolate at the average rate so far.
    return [float(np.interp(s, xs, ys)) if s <= xs[-1] else ys[-1] * s / xs[-1] for s in steps]


def _token_scale(max_tokens: float) -> tuple[float, str]:
    for div, unit in ((1e9, "billions"), (1e6, "millions"), (1e3, "thousands")):
        if max_tokens >= div:
            return div, unit
    return 1.0, ""


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_losses(results: list[dict], histories: dict, path: Path) -> Path | None:
    """One panel per data source: its training loss against total tokens trained on."""
    sources = [s for s in _sources(results, histories)
               if any(histories.get(r["run"], {}).get(f"loss/{s}") for r in results)]
    if not sources:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(sources), figsize=(6.2 * len(sources), 4.4), squeeze=False)
    runs = [histories.get(r["run"], {}) for r in results]
    runs = [h for h in runs if any(h.get(f"loss/{s}") for s in sources)]
    on_tokens = all(_tokens_at(h, [1]) is not None for h in runs)
    span = 0.0
    for h in runs if on_tokens else []:
        steps = sorted({p[0] for s in sources for p in h.get(f"loss/{s}", [])})
        span = max(span, max(_tokens_at(h, steps)))
    div, unit = _token_scale(span)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, source in zip(axes[0], sources):
        smoothed, tops = False, []
        for i, r in enumerate(results):
            hist = histories.get(r["run"], {})
            pts = hist.get(f"loss/{source}", [])
            if not pts:
                continue
            steps, vals = [p[0] for p in pts], [p[1] for p in pts]
            xs = [x / div for x in _tokens_at(hist, steps)] if on_tokens else steps
            window = max(1, len(vals) // 15)
            smoothed |= window > 1
            curve = _smooth(vals, window)
            tops.append(max(curve))
            color = colors[i % len(colors)]  # a run keeps its colour in every panel
            ax.plot(xs, curve, label=r["run"], linewidth=1.6, color=color)
            if window > 1:
                ax.plot(xs, vals, color=color, alpha=0.2, linewidth=0.8)
        if tops:  # a single loss spike must not flatten every curve; the raw line shows it clipped
            ax.set_ylim(top=max(tops) * 1.05)
        ax.set_title(f"loss on {source} tokens" + (" (running mean; raw faded)" if smoothed else ""), fontsize=10)
        ax.set_xlabel(f"training tokens seen, all sources ({unit})" if on_tokens and unit else
                      "training tokens seen, all sources" if on_tokens else "optimizer step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, title="run", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metric_vs_share(results: list[dict], path: Path) -> Path | None:
    keys = [k for k in EVAL_LABELS if any(k in r for r in results)]
    keys += sorted({k for r in results for k in r if k.startswith("eval/") and k not in EVAL_LABELS
                    and not k.startswith("eval/best/") and not k.endswith(("loss", "_lo", "_hi"))})
    keys = [k for k in keys if not k.endswith("format_token_loss")] or keys
    if not keys:
        return None
    plt = _plt()
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*X"
    for ax, key in zip(axes.flat, keys):
        for i, r in enumerate(results):
            if key in r:
                ax.scatter(r.get("diverse_share", 0.0), r[key], s=45, label=r["run"],
                           color=colors[i % len(colors)], marker=markers[i // len(colors) % len(markers)],
                           edgecolors="black", linewidths=0.4, alpha=0.85)
        label = EVAL_LABELS.get(key, key.removeprefix("eval/"))
        ax.set_title(f"{key.removeprefix('eval/')}  ({'lower' if _lower_is_better(key) else 'higher'} is better)",
                     fontsize=9)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xlabel("diverse-data share of training tokens", fontsize=8)
        ax.set_xlim(-0.05, 1.0)
        ax.margins(y=0.15)
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8,
               bbox_to_anchor=(0.5, 0.0), title="run", title_fontsize=8)
    fig.suptitle("final evaluation metrics against the diverse-data share (one point per run)", fontsize=11)
    legend_rows = -(-len(labels) // 5)
    fig.tight_layout(rect=(0, min(0.35, (0.05 + 0.035 * legend_rows) * 3 / (nrows + 2)), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_alignment(results: list[dict], histories: dict, path: Path) -> Path | None:
    """Distance between each new special token and its keyword over steps: one panel per
    (token, keyword) row and layer column, since layers differ in scale by 10x or more."""
    keys = sorted({k for r in results for k in r if _ALIGN.match(k)}
                  | {k for r in results for k in histories.get(r["run"], {}) if _ALIGN.match(k)})
    if not keys:
        return None
    pairs = sorted({(m["token"], m["keyword"]) for m in map(_ALIGN.match, keys)})
    layers = sorted({int(_ALIGN.match(k)["layer"]) for k in keys})
    plt = _plt()
    fig, axes = plt.subplots(len(pairs), len(layers), figsize=(4.2 * len(layers) + 1.8, 3.2 * len(pairs)),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (row, (token, keyword)), (col, layer) in ((a, b) for a in enumerate(pairs) for b in enumerate(layers)):
        ax = axes[row][col]
        for i, r in enumerate(results):
            key = f"align/{token}/{keyword}/l{layer}"
            pts = histories.get(r["run"], {}).get(key) or ([(r.get("steps", 0), r[key])] if key in r else [])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[i % len(colors)],
                        marker="o", markersize=3, linewidth=1.3, label=r["run"])
        ax.set_title(f"{_token_label(token)} vs '{keyword}', layer {layer}", fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        if col == 0:
            ax.set_ylabel("Euclidean distance\n(lower = closer)", fontsize=8)
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=colors[i % len(colors)], marker="o", markersize=3, label=r["run"])
               for i, r in enumerate(results)]
    fig.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), title="run",
               title_fontsize=8)
    fig.suptitle("new special token vs keyword: distance of their hidden states", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(results: list[dict], out_dir: str | Path, histories: dict | None = None) -> Path:
    """report.md + PNGs + results.json in out_dir. histories: {run: {metric: [(step, value)]}};
    runs without one are read from row["run_dir"]/metrics.jsonl."""
    results = _with_derived(_norm(results))
    histories = dict(histories or {})
    for r in results:
        if r["run"] not in histories and r.get("run_dir"):
            histories[r["run"]] = _history_from_run_dir(r["run_dir"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_losses(results, histories, out / "loss_per_source.png"),
             plot_metric_vs_share(results, out / "eval_vs_diverse_share.png"),
             plot_alignment(results, histories, out / "token_alignment.png")]
    md = ["# DELIA experiment report", "", _markdown_table(results, histories), "",
          "Mtok: training tokens (millions) read per source; best_X: best value over the run's "
          "evaluations when it differs from the final one; d(token,keyword)_lN: distance at layer N "
          "(lower = closer); time_s: wall time of the MLflow run; gpu_h: time_s x ranks / 3600.", ""]
    md += [f"![{p.stem}]({p.name})" for p in plots if p is not None]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return out / "report.md"


def runs_from_mlflow(experiment: str, tracking_uri: str, run_ids: list[str] | None = None):
    """(rows, histories) for the runs of an MLflow experiment (report runs excluded)."""
    from mlflow.tracking import MlflowClient

    from ..errors import UserError
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no MLflow store at {tracking_uri} (give --tracking-uri or set MLFLOW_TRACKING_URI)")
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise UserError(f"no MLflow experiment {experiment!r} at {tracking_uri}; experiments there: {names}")
    if run_ids:
        runs = []
        for rid in run_ids:
            try:
                runs.append(client.get_run(rid))
            except Exception as e:  # noqa: BLE001 - MlflowException for an unknown id
                raise UserError(f"run {rid!r} not found at {tracking_uri}: {str(e)[:200]}") from e
    else:
        runs = [r for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
                if r.data.tags.get(SUMMARY_TAG) != "report"]
    if not runs:
        raise UserError(f"MLflow experiment {experiment!r} has no runs to compare")
    rows, histories = [], {}
    for run in runs:
        m, p, tags = run.data.metrics, run.data.params, run.data.tags
        name = run.info.run_name or run.info.run_id[:8]
        if name in histories:
            name = f"{name}-{run.info.run_id[:6]}"
        hist = {k: [(x.step, x.value) for x in client.get_metric_history(run.info.run_id, k)]
                for k in m if k == "loss" or k.startswith(("loss/", "tokens/", "eval/", "align/"))}
        wall = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000.0
        row = {"run": name, "run_id": run.info.run_id,
               "steps": max((s for s, _ in hist.get("loss", [])), default=0),
               "diverse_share": m.get("share/diverse", float(p.get("data.sources.diverse.weight", 0.0))),
               "train_loss_last": m.get("loss"), "wall_s": wall}
        if tags.get("world_size", "").isdigit():
            row["gpu_hours"] = wall * int(tags["world_size"]) / 3600.0
        if run.info.status != "FINISHED":
            row["status"] = run.info.status
        row.update({k: v for k, v in m.items() if k.startswith(("eval/", "align/", "tokens/", "grad_cos/"))})
        for k, pts in hist.items():
            if k.startswith("eval/") and len(pts) > 1:
                vals = [v for _, v in pts]
                row[f"eval/best/{k.removeprefix('eval/')}"] = min(vals) if _lower_is_better(k) else max(vals)
        rows.append({k: v for k, v in row.items() if v is not None})
        histories[name] = hist
    return rows, histories


def build_report(experiment: str, tracking_uri: str, out_dir: str | Path, run_ids: list[str] | None = None,
                 summary_run: bool = False) -> Path:
    """Compare the runs of `experiment`: prints the table, writes out_dir/report.md and PNGs;
    with summary_run, also logs them as artifacts of a run tagged delia.kind=report."""
    rows, histories = runs_from_mlflow(experiment, tracking_uri, run_ids)
    path = write_report(rows, out_dir, histories)
    print(comparison_table(rows, histories, max_width=terminal_width()))
    not_done = [f"{r['run']} ({r['status']})" for r in rows if "status" in r]
    if not_done:
        print(f"note: not finished: {', '.join(not_done)}")
    if summary_run:
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri)
        exp_id = client.get_experiment_by_name(experiment).experiment_id
        run = client.create_run(exp_id, run_name=f"report-{experiment}",
                                tags={SUMMARY_TAG: "report", "compared_runs": ",".join(r["run_id"] for r in rows)})
        client.log_artifacts(run.info.run_id, str(Path(out_dir)), "report")
        client.set_terminated(run.info.run_id)
        print(f"logged to MLflow run {run.info.run_id} (artifacts under report/)")
    return path
