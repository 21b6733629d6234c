"""Mixer: a deterministic deficit scheduler over N sources, by tokens or by samples.

Each step draws from the source whose count is furthest below its target share of all
counted so far. The count is tokens (token shares, `weight`) or samples (the paper's
sample ratio, data.diverse_ratio). The cumulative error of every source stays below about
one sample (one sample's length for tokens), so over a window of W sequences of L tokens
each token share is within ~max_sample_len / (W * L) of its weight; no randomness, so
resume needs only counters.

`once` sources (downstream under data.downstream_once) leave the draw when they run out;
the mix ends when none is left, so each of their records is drawn exactly once.
"""
from __future__ import annotations

from .reader import Sample, SourceExhausted, SourceStream


class TokenMixer:
    def __init__(self, sources: list[SourceStream], weights: list[float], by_samples: bool = False,
                 once: tuple[int, ...] = ()):
        self.sources, self.weights, self.by_samples = sources, list(weights), by_samples
        self.once = set(once)
        self.tokens = [0] * len(sources)
        self.samples = [0] * len(sources)
        self.dropped: list[int] = []

    def next(self) -> Sample:
        """Raises SourceExhausted when the chosen source has nothing left (for `once`
        sources: when none of them has anything left)."""
        while True:
            counts = self.samples if self.by_samples else self.tokens
            total = sum(counts)
            best, best_deficit = -1, None
            for i, w in enumerate(self.weights):
                if w <= 0 or i in self.dropped:
                    continue
                deficit = w * total - counts[i]
                if best_deficit is None or deficit > best_deficit:
                    best, best_deficit = i, deficit
            if best < 0:
                raise SourceExhausted("every source")
            try:
                sample = self.sources[best].next()
            except SourceExhausted:
                if best not in self.once:
                    raise
                self.dropped.append(best)
                if self.once <= set(self.dropped):
                    raise
                continue
            self.tokens[best] += len(sample)
            self.samples[best] += 1
            return sample

    def state_dict(self) -> dict:
        return {"tokens": list(self.tokens), "samples": list(self.samples), "dropped": list(self.dropped)}

    def load_state_dict(self, sd: dict):
        self.tokens, self.samples = list(sd["tokens"]), list(sd["samples"])
        self.dropped = list(sd.get("dropped", []))
