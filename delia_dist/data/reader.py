"""Per-source streaming reader: shards split across ranks and workers, seeded shard-order
shuffle and a sample shuffle buffer, decoding with validation and counted skips.

A reader slot works through a plan of tasks per epoch: (epoch, shard, start, step) reads
members start, start+step, ... of one shard. Every position is explicit (epoch, task,
member, buffer references, RNG state) so state_dict() restores the exact stream, and a
plan can be rewritten for another number of slots (remap.py).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Mapping, Optional

from .decode import IGNORE, DecodeRules, Sample, Skip, decode, shifted_labels
from .errors import DataError
from .refs import load_samples, refs_to_state
from .shards import iter_shard

__all__ = ["IGNORE", "Sample", "shifted_labels", "SourceExhausted", "SourcePolicy", "SourceCounters",
           "ShardReader", "SourceStream", "normal_tasks"]
log = logging.getLogger("delia_dist.data")
LOGGED_PER_REASON = 5
NEVER_SKIPPED = ("overlong", "corrupt_shard", "no_loss_tokens")  # counted even with bad_records: error


class SourceExhausted(Exception):
    """A source finished its last allowed epoch: the stream ends."""


@dataclass(frozen=True)
class SourcePolicy:
    """What every reader of one source shares and nothing changes during a run."""
    index: int
    name: str
    urls: tuple[str, ...]
    rules: DecodeRules
    # url -> sample count from the manifest, to catch short shards
    expected: Mapping[str, int] = field(default_factory=dict)
    max_epochs: Optional[int] = None
    bad_records: str = "skip"
    bad_shards: str = "error"
    seed: int = 0
    shuffle_shards: bool = True
    shuffle_buffer: int = 1


class SourceCounters:
    """What one rank has counted for a source: skips by reason, truncations, re-tokenizations."""

    def __init__(self, policy: SourcePolicy):
        self.name, self.bad_records = policy.name, policy.bad_records
        self.skipped: dict[str, int] = {}
        self.truncated = self.retokenized = 0

    def skip(self, s: Skip):
        if self.bad_records == "error" and s.reason not in NEVER_SKIPPED:
            raise DataError(f"{s.where}: {s.message}")
        n = self.skipped[s.reason] = self.skipped.get(s.reason, 0) + 1
        if n <= LOGGED_PER_REASON:
            log.warning("source %s: skipped %s (%s): %s%s", self.name, s.where, s.reason, s.message,
                        " (further skips of this kind are only counted)" if n == LOGGED_PER_REASON else "")

    def state_dict(self) -> dict:
        return {"skipped": dict(self.skipped), "truncated": self.truncated, "retokenized": self.retokenized}

    def load_state_dict(self, sd: dict):
        self.skipped, self.truncated = dict(sd["skipped"]), sd["truncated"]
        self.retokenized = sd["retokenized"]


def normal_tasks(name: str, seed: int, n_shards: int, shuffle: bool, slot: int, n_slots: int,
                 epoch: int) -> list[tuple[int, int, int, int]]:
    """One slot's (epoch, shard, start, step) tasks for an epoch. Shards are shuffled with a
    seed every slot shares, then dealt round-robin; with fewer shards than slots every slot
    reads every shard and keeps every n-th member (shifted per shard), so small downstream
    sets still reach every rank."""
    order = list(range(n_shards))
    if shuffle:
        random.Random(f"{seed}|{name}|shards|{epoch}").shuffle(order)
    if n_shards < n_slots:
        return [(epoch, s, (slot - j) % n_slots, n_slots) for j, s in enumerate(order)]
    return [(epoch, s, 0, 1) for s in order[slot::n_slots]]


class ShardReader:
    """One (rank, worker) slot's view of a source."""

    def __init__(self, policy: SourcePolicy, counters: SourceCounters, slot: int, n_slots: int):
        self.policy, self.counters, self.slot, self.n_slots = policy, counters, slot, n_slots
        self.epoch = self.epochs_done = self.good_in_epoch = 0
        self.eof = False
        self.buffer: list[Sample] = []
        self._it = None
        self._start_epoch(None)

    def _start_epoch(self, tasks):
        """Normal tasks for self.epoch, or the given ones (a plan written by remap)."""
        p = self.policy
        self.custom = tasks is not None
        self.tasks = [tuple(t) for t in tasks] if self.custom else \
            normal_tasks(p.name, p.seed, len(p.urls), p.shuffle_shards, self.slot, self.n_slots, self.epoch)
        self.task = self.in_shard = 0
        self.rng = random.Random(f"{p.seed}|{p.name}|buffer|{self.slot}|{self.epoch}"
                                 + (f"|of{self.n_slots}" if self.custom else ""))

    def _end_epoch(self):
        p = self.policy
        if self.good_in_epoch == 0 and not self.custom:
            raise DataError(f"source {p.name}: a whole epoch gave rank/worker slot {self.slot} of "
                            f"{self.n_slots} no usable sample (skips so far: {self.counters.skipped}); "
                            f"{len(p.urls)} shard(s) may hold fewer samples than ranks x workers")
        self.epochs_done += 1
        if p.max_epochs is not None and self.epochs_done >= p.max_epochs:
            self.eof = True
            return
        self.epoch += 1
        self.good_in_epoch = 0
        self._start_epoch(None)

    def _next_task(self):
        self._it, self.task, self.in_shard = None, self.task + 1, 0

    def _next_raw(self):
        """(epoch, shard, member, url, key, parts) of the next member this slot reads, or None."""
        while not self.eof:
            if self.task >= len(self.tasks):
                self._end_epoch()
                continue
            epoch, shard, start, step = self.tasks[self.task]
            url = self.policy.urls[shard]
            if self._it is None:
                self.in_shard = max(self.in_shard, start)
                self._skip, self._yielded = self.in_shard, 0
                self._it = iter_shard(url, skip=self.in_shard)
            try:
                try:
                    key, parts = next(self._it)
                except StopIteration:
                    want = self.policy.expected.get(url)
                    if want is not None and want != self.in_shard and (self._yielded or self._skip < want):
                        raise DataError(f"{url}: {self.in_shard} samples, but the manifest "
                                        f"lists {want} (shard replaced or truncated?)") from None
                    self._next_task()
                    continue
            except DataError as e:
                if self.policy.bad_shards == "error":
                    raise
                self.counters.skip(Skip("corrupt_shard", url, f"rest of shard dropped: {e}"))
                self._next_task()
                continue
            member = self.in_shard
            self.in_shard += 1
            self._yielded += 1
            if (member - start) % step:
                continue
            return epoch, shard, member, url, key, parts
        return None

    def fill(self, most: int | None = None) -> int:
        """Read into the shuffle buffer until it is full or the source ends (at most `most`
        new samples); returns how many it holds. next() tops it up by one sample per call, so
        after a fill before step 1 no step has to read a whole buffer's worth."""
        size = max(1, self.policy.shuffle_buffer)
        limit = size if most is None else min(size, len(self.buffer) + most)
        while len(self.buffer) < limit:
            raw = self._next_raw()
            if raw is None:
                break
            epoch, shard, member, url, key, parts = raw
            got = decode(self.policy.rules, url, key, parts, epoch)
            if isinstance(got, Skip):
                self.counters.skip(got)
                continue
            self.counters.retokenized += got.retokenized
            self.counters.truncated += got.truncated
            got.sample.ref = (epoch, shard, member)
            self.good_in_epoch += 1
            self.buffer.append(got.sample)
        return len(self.buffer)

    @property
    def buffer_full(self) -> bool:
        return self.eof or len(self.buffer) >= max(1, self.policy.shuffle_buffer)

    def next(self) -> Sample:
        self.fill()
        if not self.buffer:
            raise SourceExhausted(self.policy.name)
        j = self.rng.randrange(len(self.buffer))
        self.buffer[j], self.buffer[-1] = self.buffer[-1], self.buffer[j]
        return self.buffer.pop()

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"epoch": self.epoch, "task": self.task, "in_shard": self.in_shard,
                "tasks": [list(t) for t in self.tasks] if self.custom else None,
                "epochs_done": self.epochs_done, "good_in_epoch": self.good_in_epoch, "eof": self.eof,
                "rng": [version, list(internal), gauss], "buffer": refs_to_state(self.buffer)}

    def load_state_dict(self, sd: dict, policies):
        for k in ("epoch", "epochs_done", "good_in_epoch", "eof"):
            setattr(self, k, sd[k])
        self._start_epoch(sd["tasks"])
        self.task, self.in_shard = sd["task"], sd["in_shard"]
        if sd["rng"] is not None:
            version, internal, gauss = sd["rng"]
            self.rng.setstate((version, tuple(internal), gauss))
        self.buffer = load_samples(policies, sd["buffer"])
        self._it = None


class SourceStream:
    """A source on one rank: its worker slots read in turn, as DataLoader workers would be."""

    def __init__(self, policy: SourcePolicy, rank: int, world_size: int, num_workers: int):
        self.policy = policy
        self.counters = SourceCounters(policy)
        n = world_size * num_workers
        self.readers = [ShardReader(policy, self.counters, rank * num_workers + w, n)
                        for w in range(num_workers)]
        self.turn = 0

    def next(self) -> Sample:
        """The next sample from the worker whose turn it is; a worker that ran dry hands its
        turn on (as DataLoader does), and the source ends when all have."""
        for _ in range(len(self.readers)):
            reader = self.readers[self.turn]
            self.turn = (self.turn + 1) % len(self.readers)
            try:
                return reader.next()
            except SourceExhausted:
                continue
        raise SourceExhausted(self.policy.name)

    @property
    def epochs(self) -> int:
        return min(r.epochs_done for r in self.readers)

    def state_dict(self) -> dict:
        return {"turn": self.turn, "spec": self.counters.state_dict(),
                "readers": [r.state_dict() for r in self.readers]}

    def load_state_dict(self, sd: dict, policies):
        if len(sd["readers"]) != len(self.readers):
            raise DataError(f"source {self.policy.name}: state has {len(sd['readers'])} workers, "
                            f"stream has {len(self.readers)}")
        self.turn = sd["turn"]
        self.counters.load_state_dict(sd["spec"])
        for r, s in zip(self.readers, sd["readers"]):
            r.load_state_dict(s, policies)
