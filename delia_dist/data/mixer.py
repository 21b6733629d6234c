"""Token-budget mixer: a deterministic deficit scheduler over N sources.

Each step draws from the source whose token count is furthest below its target share of
all tokens emitted so far. The cumulative error of every source stays below about one
sample's length, so over a window of W sequences of L tokens each share is within
~max_sample_len / (W * L) of its weight; no randomness, so resume needs only counters.
"""
from __future__ import annotations

from .reader import Sample, SourceStream


class TokenMixer:
    def __init__(self, sources: list[SourceStream], weights: list[float]):
        self.sources, self.weights = sources, list(weights)
        self.tokens = [0] * len(sources)
        self.samples = [0] * len(sources)

    def next(self) -> Sample:
        """Raises SourceExhausted when the chosen source has nothing left."""
        total = sum(self.tokens)
        best, best_deficit = -1, None
        for i, w in enumerate(self.weights):
            if w <= 0:
                continue
            deficit = w * total - self.tokens[i]
            if best_deficit is None or deficit > best_deficit:
                best, best_deficit = i, deficit
        sample = self.sources[best].next()
        self.tokens[best] += len(sample)
        self.samples[best] += 1
        return sample

    def state_dict(self) -> dict:
        return {"tokens": list(self.tokens), "samples": list(self.samples)}

    def load_state_dict(self, sd: dict):
        self.tokens, self.samples = list(sd["tokens"]), list(sd["samples"])
