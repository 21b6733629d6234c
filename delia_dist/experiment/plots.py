"""The report's plots, what people look at first: loss per data source against training
tokens, each eval metric against the scale of diverse data, special-token distances over steps."""
from __future__ import annotations

from pathlib import Path

from .. import atomic
from .tables import ALIGN, EVAL_LABELS, lower_is_better, source_names, token_label


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


def _save(fig, path: Path, **kw) -> None:
    """A PNG appears whole or not at all (an interrupted report leaves no truncated plot)."""
    with atomic.open_for_write(path, "wb") as f:
        fig.savefig(f, format="png", **kw)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_losses(results: list[dict], histories: dict, path: Path) -> Path | None:
    """One panel per data source: its training loss against total tokens trained on."""
    sources = [s for s in source_names(results, histories)
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
    _save(fig, path, dpi=110)
    plt.close(fig)
    return path


def diverse_scale(row: dict) -> float | None:
    """Diverse tokens per downstream token the run trained on (0: no diverse data); None for
    a row that did not train (base)."""
    div, down = row.get("tokens/diverse"), row.get("tokens/downstream")
    if isinstance(div, (int, float)) and isinstance(down, (int, float)) and down > 0:
        return div / down
    share = row.get("diverse_share")
    if isinstance(share, (int, float)) and share < 1:
        return share / (1 - share)
    return None


def plot_metric_vs_scale(results: list[dict], path: Path) -> Path | None:
    """Each eval metric against the scale of diverse data (log scale, 0 included); a run
    repeated over seeds is one point, its mean, with the interval over seeds; a single run
    shows its per-example bootstrap interval where it has one; base is a dashed line."""
    from .seeds import seed_rows

    keys = [k for k in EVAL_LABELS if any(k in r for r in results)]
    keys += sorted({k for r in results for k in r if k.startswith("eval/") and k not in EVAL_LABELS
                    and not k.startswith("eval/best/") and not k.endswith(("loss", "_lo", "_hi"))})
    keys = [k for k in keys if not k.endswith("format_token_loss")] or keys
    if not keys:
        return None
    grouped = seed_rows(results)
    for g in grouped:  # the scale a group trained at: its seeds' mean
        members = [diverse_scale(r) for r in results if r.get("group") == g["group"] and "seed" in r]
        g["scale"] = sum(members) / len(members) if members and None not in members else None
    points = grouped + [dict(r, scale=diverse_scale(r)) for r in results if "seed" not in r]
    plt = _plt()
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*X"
    for ax, key in zip(axes.flat, keys):
        at_x: dict[float, int] = {}
        for i, r in enumerate(points):
            if key not in r:
                continue
            style = dict(color=colors[i % len(colors)], label=r["run"])
            if r["scale"] is None:
                ax.axhline(r[key], linestyle="--", linewidth=1, **style)
                continue
            lo, hi = r.get(key + "_seed_lo", r.get(key + "_lo")), r.get(key + "_seed_hi", r.get(key + "_hi"))
            # runs at the same scale (the controls at 0) side by side, not on top of each other
            n = at_x[r["scale"]] = at_x.get(r["scale"], -1) + 1
            x = r["scale"] * 1.08 ** n if r["scale"] else 0.08 * n
            err = [[r[key] - lo], [hi - r[key]]] if lo is not None and hi is not None else None
            ax.errorbar(x, r[key], yerr=err, fmt=markers[i // len(colors) % len(markers)], markersize=6,
                        capsize=3, markeredgecolor="black", markeredgewidth=0.4, **style)
        label = EVAL_LABELS.get(key, key.removeprefix("eval/"))
        ax.set_title(f"{key.removeprefix('eval/')}  ({'lower' if lower_is_better(key) else 'higher'} is better)",
                     fontsize=9)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("diverse tokens per downstream token (0 = none)", fontsize=8)
        ax.margins(x=0.08, y=0.15)
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8,
               bbox_to_anchor=(0.5, 0.0), title="run", title_fontsize=8)
    fig.suptitle("final evaluation metrics against the scale of diverse data (bars: interval over seeds, "
                 "else per-example bootstrap)", fontsize=10)
    legend_rows = -(-len(labels) // 5)
    fig.tight_layout(rect=(0, min(0.35, (0.05 + 0.035 * legend_rows) * 3 / (nrows + 2)), 1, 1))
    _save(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_alignment(results: list[dict], histories: dict, path: Path) -> Path | None:
    """Distance between each new special token and its keyword over steps: one panel per
    (token, keyword) row and layer column, since layers differ in scale by 10x or more."""
    keys = sorted({k for r in results for k in r if ALIGN.match(k)}
                  | {k for r in results for k in histories.get(r["run"], {}) if ALIGN.match(k)})
    if not keys:
        return None
    pairs = sorted({(m["token"], m["keyword"]) for m in map(ALIGN.match, keys)})
    layers = sorted({int(ALIGN.match(k)["layer"]) for k in keys})
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
        ax.set_title(f"{token_label(token)} vs '{keyword}', layer {layer}", fontsize=9)
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
    _save(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


