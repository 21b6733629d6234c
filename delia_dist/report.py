"""Side-by-side comparison of runs: a terminal table, a markdown report and PNG plots.

Plots are what people look at first: loss per data source over training, each eval
metric against the diverse-data share, and special-token distances per layer.
"""
from __future__ import annotations

import json
from pathlib import Path

# Single-word labels keep the terminal table easy to read and to parse with awk.
KEY_COLUMNS = [("run", "run"), ("steps", "steps"), ("diverse_share", "diverse_share"),
               ("train_loss_last", "train_loss"), ("eval/translation/bleu", "BLEU"),
               ("eval/translation/chrf", "chrF"), ("eval/translation/bleurt", "BLEURT"),
               ("eval/format/accuracy", "fmt_acc"), ("eval/format/f1", "fmt_F1"),
               ("eval/format/well_formed", "well_formed"), ("eval/format/format_token_loss", "fmt_tok_loss"),
               ("align/_sep_/json/l0", "d(<sep>,json)_l0"), ("wall_s", "time_s")]


def _norm(results: list[dict]) -> list[dict]:
    """Metric names as MLflow stores them ('<sep>' -> '_sep_'), whatever the row came from."""
    from .tracking import clean_name
    return [{clean_name(k) if isinstance(k, str) else k: v for k, v in r.items()} for r in results]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _columns(results: list[dict]) -> list[tuple[str, str]]:
    return [(k, label) for k, label in KEY_COLUMNS if any(k in r for r in results)]


def comparison_table(results: list[dict]) -> str:
    results = _norm(results)
    cols = _columns(results)
    rows = [[label for _, label in cols]] + [[_fmt(r.get(k, "")) for k, _ in cols] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(results: list[dict]) -> str:
    cols = _columns(results)
    out = ["| " + " | ".join(label for _, label in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(k, "")) for k, _ in cols) + " |" for r in results]
    return "\n".join(out)


_HISTORIES: dict = {}


def _loss_series(r: dict, source: str) -> tuple[list, list]:
    key = f"loss/{source}"
    if r.get("run") in _HISTORIES:
        pts = _HISTORIES[r["run"]].get(key, [])
        return [p[0] for p in pts], [p[1] for p in pts]
    rows = [m for m in _metrics_rows(r.get("run_dir", "")) if key in m]
    return [m["step"] for m in rows], [m[key] for m in rows]


def _metrics_rows(run_dir: str) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def _smooth(values: list[float], window: int = 10) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def plot_losses(results: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = ["downstream", "diverse"]
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4), sharey=True)
    for ax, source in zip(axes, sources):
        for r in results:
            steps, vals = _loss_series(r, source)
            if steps:
                line, = ax.plot(steps, _smooth(vals), label=r["run"])
                ax.plot(steps, vals, color=line.get_color(), alpha=0.15, linewidth=0.8)
        ax.set_title(f"training loss on {source} tokens (10-step mean, raw faded)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metric_vs_share(results: list[dict], path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in results for k in r if k.startswith("eval/") and not k.endswith("loss")})
    if not keys:
        return None
    ncols = min(4, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        for r in results:
            if key in r:
                ax.scatter(r.get("diverse_share", 0.0), r[key], s=30, label=r["run"])
        ax.set_title(key.removeprefix("eval/"), fontsize=9)
        ax.set_xlabel("diverse share of training tokens")
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("evaluation metrics against the diverse-data share", fontsize=11)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_alignment(results: list[dict], path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in results for k in r if k.startswith("align/")})
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(keys) * len(results) / 2), 4))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        ax.bar([j + i * width for j in range(len(keys))], [r.get(k, 0.0) for k in keys], width, label=r["run"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
    ax.set_xticklabels([k.removeprefix("align/").replace("/l", "\nlayer ") for k in keys], fontsize=7)
    ax.set_ylabel("Euclidean distance (lower = closer)")
    ax.set_title("new token vs keyword representations")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: list[dict], out_dir: str | Path, histories: dict | None = None) -> Path:
    """histories: {run: {metric: [(step, value), ...]}} when rows come from MLflow rather
    than from run directories with metrics.jsonl."""
    results = _norm(results)
    global _HISTORIES
    _HISTORIES = histories or {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_losses(results, out / "loss_per_source.png"),
             plot_metric_vs_share(results, out / "eval_vs_diverse_share.png"),
             plot_alignment(results, out / "token_alignment.png")]
    md = ["# DELIA experiment report", "", _markdown_table(results), ""]
    md += [f"![{p.stem}]({p.name})" for p in plots if p is not None]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return out / "report.md"


def runs_from_mlflow(experiment: str, tracking_uri: str, run_ids: list[str] | None = None):
    """(rows, histories) for the finished runs of an MLflow experiment."""
    from mlflow.tracking import MlflowClient

    from .errors import UserError
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise UserError(f"no MLflow experiment {experiment!r} at {tracking_uri}; experiments there: {names}")
    runs = [client.get_run(r) for r in run_ids] if run_ids else client.search_runs(
        [exp.experiment_id], order_by=["attributes.start_time ASC"])
    rows, histories = [], {}
    for run in runs:
        m, p = run.data.metrics, run.data.params
        name = run.info.run_name or run.info.run_id[:8]
        hist = {k: [(x.step, x.value) for x in client.get_metric_history(run.info.run_id, k)]
                for k in m if k.startswith("loss/")}
        loss_hist = client.get_metric_history(run.info.run_id, "loss") if "loss" in m else []
        row = {"run": name, "run_id": run.info.run_id,
               "steps": max((x.step for x in loss_hist), default=0),
               "diverse_share": m.get("share/diverse", float(p.get("data.sources.diverse.weight", 0.0))),
               "train_loss_last": m.get("loss"),
               "wall_s": ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000.0}
        row.update({k: v for k, v in m.items() if k.startswith(("eval/", "align", "tokens/", "grad_cos/"))})
        rows.append({k: v for k, v in row.items() if v is not None})
        histories[name] = hist
    return rows, histories


def build_report(experiment: str, tracking_uri: str, out_dir: str | Path, run_ids: list[str] | None = None) -> Path:
    rows, histories = runs_from_mlflow(experiment, tracking_uri, run_ids)
    path = write_report(rows, out_dir, histories)
    print(comparison_table(rows))
    return path
