"""What the trainer measures besides the loss: rank 0's metrics.jsonl, throughput and data
counters at a log step, new-token alignment, parameter sharding and peak memory.

The collective ones (log_metrics, alignment) are called by every rank at the same steps.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import distributed, storage


class MetricsLog:
    """Rank 0's per-step metrics as JSONL in the run dir: the record tests and tools read,
    independent of any tracking server."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if self.enabled:
            with storage.writing("the metrics log", self.path.parent), open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def log_metrics(since: dict, stream, seconds: float) -> dict:
    """Throughput, token shares and data counters since the last log line (all ranks:
    the data counters are summed over ranks here)."""
    names = stream.source_names
    out = {"tokens_per_s": since["tokens"] / max(seconds, 1e-9),
           "packing_efficiency": since["tokens"] / max(since["slots"], 1)}
    stats = stream.stats()
    totals = distributed.sum_host([v for s in names for v in (stats[s]["tokens"], stats[s]["samples"])])
    all_tokens = sum(totals[0::2]) or 1.0
    for i, name in enumerate(names):
        out[f"tokens/{name}"] = totals[2 * i]
        out[f"samples/{name}"] = totals[2 * i + 1]
        out[f"share/{name}"] = totals[2 * i] / all_tokens
        out[f"loss_tokens/{name}"] = float(since["loss_tokens"][i])
    # Ranks may have met different skip reasons: agree on their union before summing.
    local = {r for s in names for r in stats[s]["skipped"]}
    reasons = sorted(set().union(*distributed.all_gather_object(local)))
    if reasons:
        skipped = distributed.sum_host([sum(stats[s]["skipped"].get(r, 0) for s in names) for r in reasons])
        for r, v in zip(reasons, skipped):
            out[f"skipped/{r}"] = v
    return out


def alignment(engine, tokenizer, cfg) -> dict:
    """New-token vs keyword distances on the live model. Every rank runs it: under ZeRO-3
    the forward gathers partitioned weights collectively."""
    from ..eval.alignment import alignment_metrics
    was_training = engine.module.training
    engine.module.eval()
    try:
        return alignment_metrics(engine.module.model, tokenizer, cfg.eval.alignment.keywords,
                                 cfg.eval.alignment.layers)
    finally:
        engine.module.train(was_training)


def local_param_fraction(module) -> float:
    """Share of all parameter elements this rank stores (1/world under ZeRO-3, 1.0 unsharded)."""
    local = full = 0
    for p in module.parameters():
        if hasattr(p, "ds_tensor"):
            local += p.ds_tensor.numel()
            full += p.ds_numel
        else:
            local += p.numel()
            full += p.numel()
    return local / max(full, 1)


def peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
