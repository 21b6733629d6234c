"""The mix a data config resolves to, before any training: per-source sample and token shares,
diverse samples per downstream sample, and the run's expected tokens and steps.

Both mixing units meet here. By token share (`weight`), a source's sample share follows from
its mean sample length; by sample ratio (`data.diverse_ratio`, the paper's unit), its token
share does. Mean lengths come from the shard manifests (`delia data shard` writes sample and
token counts), so a 70B run's shares and length can be read (`delia experiment --dry-run`,
the trainer's start line, MLflow params mix.*) before any GPU time is spent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .errors import DataError
from .sources import resolve_shards


def sample_targets(cfg) -> list[float] | None:
    """Per-source share of *samples* under data.diverse_ratio (None: the mix is by tokens).
    Diverse sources together get r/(1+r) of the samples, downstream 1/(1+r); `weight` splits
    a kind's share among its sources (evenly where a kind's weights are all zero)."""
    r = cfg.diverse_ratio
    if r is None:
        return None
    kind_share = {"diverse": r / (1 + r), "downstream": 1 / (1 + r)}
    out = []
    for s in cfg.sources:
        same = [o for o in cfg.sources if o.kind == s.kind]
        total = sum(o.weight for o in same)
        out.append(kind_share[s.kind] * (s.weight / total if total > 0 else 1 / len(same)))
    return out


@dataclass
class SourceMix:
    name: str
    kind: str
    samples: Optional[int]  # one epoch, from the manifest (None: no manifest)
    tokens: Optional[int]
    sample_share: Optional[float]
    token_share: Optional[float]


@dataclass
class MixPlan:
    unit: str  # "tokens" (weights) or "samples" (data.diverse_ratio)
    sources: list[SourceMix]
    diverse_per_downstream: Optional[float]  # samples
    tokens_per_step: int
    expected_tokens: Optional[int]
    expected_steps: Optional[int]
    steps_from: str  # what fixes the run's length

    def params(self) -> dict:
        """Flat values for MLflow params (mix.*)."""
        out = {"unit": self.unit, "expected_steps": self.expected_steps, "expected_tokens": self.expected_tokens,
               "steps_from": self.steps_from, "diverse_per_downstream": _round(self.diverse_per_downstream)}
        for s in self.sources:
            out[f"{s.name}.token_share"] = _round(s.token_share)
            out[f"{s.name}.sample_share"] = _round(s.sample_share)
        return {k: v for k, v in out.items() if v is not None}

    def lines(self) -> list[str]:
        """Human-readable: one line per source, then the run's length."""
        out = []
        for s in self.sources:
            size = f"{s.samples} samples, {s.tokens} tokens" if s.samples is not None else "no manifest"
            out.append(f"{s.name} ({s.kind}): token share {_pct(s.token_share)}, sample share "
                       f"{_pct(s.sample_share)} ({size})")
        ratio = "?" if self.diverse_per_downstream is None else f"{self.diverse_per_downstream:.4g}"
        steps = "?" if self.expected_steps is None else str(self.expected_steps)
        out.append(f"mix by {self.unit}: {ratio} diverse samples per downstream sample; expected steps {steps} "
                   f"({self.steps_from}; {self.tokens_per_step} token slots per step)")
        return out


def _round(v):
    return None if v is None else round(v, 6)


def _pct(v):
    return "?" if v is None else f"{100 * v:.2f}%"


def _manifest_counts(spec: str) -> tuple[Optional[int], Optional[int]]:
    try:
        _, manifest, _ = resolve_shards(spec)
    except DataError:
        return None, None
    if not manifest or "samples" not in manifest or "tokens" not in manifest:
        return None, None
    return int(manifest["samples"]), int(manifest["tokens"])


def resolve_mix(cfg, tokens_per_step: int, max_steps: Optional[int] = None) -> MixPlan:
    """`cfg` is the data section; tokens_per_step = seq_len x micro-batch x grad_accum x world.
    The expected steps assume full rows (packing padding adds a few percent)."""
    counts = [_manifest_counts(s.shards) for s in cfg.sources]
    mean = [t / n if n else None for n, t in counts]
    targets = sample_targets(cfg)
    known = all(m is not None for m in mean)
    if targets is not None:
        sample_share = list(targets)
        token_share = _normalise([f * m for f, m in zip(targets, mean)]) if known else [None] * len(mean)
    else:
        token_share = [s.weight for s in cfg.sources]
        sample_share = _normalise([w / m for w, m in zip(token_share, mean)]) if known else [None] * len(mean)
    kinds = [s.kind for s in cfg.sources]
    ratio = None
    if sample_share[0] is not None:
        down = sum(f for f, k in zip(sample_share, kinds) if k == "downstream")
        div = sum(f for f, k in zip(sample_share, kinds) if k == "diverse")
        ratio = div / down if down > 0 else math.inf
    expected_tokens, steps, steps_from = None, None, "unknown: set train.max_steps or data.token_budget"
    if max_steps is not None:
        steps, steps_from = max_steps, "train.max_steps"
        expected_tokens = steps * tokens_per_step
    elif cfg.token_budget is not None:
        steps, steps_from = max(1, cfg.token_budget // tokens_per_step), "data.token_budget"
        expected_tokens = cfg.token_budget
    elif cfg.downstream_once:
        down_tokens = [t for (n, t), k in zip(counts, kinds) if k == "downstream"]
        down_share = sum(s for s, k in zip(token_share, kinds) if k == "downstream" and s is not None)
        if None in down_tokens or not known or down_share <= 0:
            steps_from = "data.downstream_once, but a source has no manifest with sample and token counts"
        else:
            expected_tokens = int(sum(down_tokens) / down_share)
            steps = max(1, math.ceil(expected_tokens / tokens_per_step))
            steps_from = "data.downstream_once: each downstream record once"
    sources = [SourceMix(s.name, s.kind, n, t, sf, ts)
               for s, (n, t), sf, ts in zip(cfg.sources, counts, sample_share, token_share)]
    return MixPlan("samples" if targets is not None else "tokens", sources, ratio, tokens_per_step,
                   expected_tokens, steps, steps_from)


def _normalise(values: list[float]) -> list[float]:
    total = sum(values)
    return [v / total if total > 0 else 0.0 for v in values]
