"""Packing: fixed-length rows from the mixed stream.

Best fit within a buffer: each row starts with the longest pending sample and is then
topped up with the longest sample that still fits, refilling the buffer after each pick,
so rows end with at most a sliver of padding and no sample is cut (unless split_samples).
Every row carries per-token position ids (restarting per sample), segment ids and source
ids; labels come pre-shifted per sample, so no label ever crosses a sample boundary.
"""
from __future__ import annotations

import numpy as np

from .decode import Sample
from .reader import SourceExhausted
from .refs import refs_to_state


class Packer:
    def __init__(self, next_sample, seq_len: int, buffer_size: int, mode: str = "best_fit",
                 split_samples: bool = False, pad_id: int = 0):
        self.next_sample, self.seq_len = next_sample, seq_len
        self.buffer_size = max(1, buffer_size) if mode == "best_fit" else 1
        self.mode, self.split_samples, self.pad_id = mode, split_samples, pad_id
        self.pending: list[Sample] = []
        self.eof = False
        self.rows = self.tokens = 0
        self._arange = np.arange(seq_len, dtype=np.int64)

    def _fill(self):
        while not self.eof and len(self.pending) < self.buffer_size:
            try:
                self.pending.append(self.next_sample())
            except SourceExhausted:
                self.eof = True

    def _pick(self, space: int) -> int:
        """Index of the longest pending sample that fits in `space`, or -1."""
        best, best_len = -1, 0
        for i, s in enumerate(self.pending):
            n = len(s.ids)
            if best_len < n <= space:
                best, best_len = i, n
                if n == space:
                    break
        return best

    def fill_row(self, ids, labels, pos, seg, src) -> bool:
        """Write one packed row into the given (pre-padded) arrays; False when nothing is left."""
        self._fill()
        if not self.pending:
            return False
        off, k, L = 0, 0, self.seq_len
        while off < L and not (self.mode == "none" and off):
            self._fill()
            if not self.pending:
                break
            i = self._pick(L - off)
            if i < 0 and off == 0:
                i = 0
            if i >= 0:
                s = self.pending.pop(i)
                n = len(s.ids)
                if n > L - off:  # only with split_samples: the rest waits at the buffer front
                    n = L - off
                    self.pending.insert(0, s.tail(n))
            elif self.split_samples:
                s = self.pending[0]
                n = L - off
                self.pending[0] = s.tail(n)
            else:
                break
            k += 1
            end = off + n
            ids[off:end] = s.ids[:n]
            labels[off:end] = s.labels[:n]
            pos[off:end] = self._arange[:n] + s.pos0 if s.pos0 else self._arange[:n]
            seg[off:end] = k
            src[off:end] = s.source
            off = end
        self.rows += 1
        self.tokens += off
        return True

    @property
    def efficiency(self) -> float:
        return self.tokens / (self.rows * self.seq_len) if self.rows else 0.0

    def state_dict(self) -> dict:
        """Pending samples by reference (refs.py): at most pack_buffer of them, 20 bytes each."""
        return {"pending": refs_to_state(self.pending), "eof": self.eof, "rows": self.rows,
                "tokens": self.tokens}

    def load_state_dict(self, sd: dict, load_samples):
        """`load_samples(refs_state)` re-reads the referenced samples (the stream knows the sources)."""
        self.pending = load_samples(sd["pending"])
        self.eof, self.rows, self.tokens = sd["eof"], sd["rows"], sd["tokens"]
