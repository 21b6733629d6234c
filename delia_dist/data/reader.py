"""Per-source streaming reader: shards split across ranks and workers, seeded shard-order
shuffle and a sample shuffle buffer, decoding with validation and counted skips.

Every position is explicit (epoch, shard, sample within shard, buffer contents, RNG
state) so state_dict() restores the exact stream.
"""
from __future__ import annotations

import json
import logging
import os
import random

import numpy as np

from .errors import DataError, RecordError
from .records import to_messages, tokenize_messages
from .shards import iter_shard

log = logging.getLogger("delia_dist.data")
IGNORE = -100
LOGGED_PER_REASON = 5


class SourceExhausted(Exception):
    """A source finished its last allowed epoch: the stream ends."""


class Sample:
    """One tokenized sample: ids, shifted labels (-100 where no loss), first position id."""
    __slots__ = ("ids", "labels", "pos0", "source")

    def __init__(self, ids, labels, pos0, source):
        self.ids, self.labels, self.pos0, self.source = ids, labels, pos0, source

    def __len__(self):
        return len(self.ids)


def shifted_labels(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """labels[t] = ids[t+1] where t+1 is a loss token; the last position never has a target,
    so a packed sequence can never learn one sample's first token from another."""
    labels = np.full(len(ids), IGNORE, dtype=np.int32)
    labels[:-1] = np.where(mask[1:] != 0, ids[1:], IGNORE)
    return labels


def samples_to_state(samples) -> dict:
    import torch
    lens = [len(s) for s in samples]
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int32))
    return {"lens": torch.tensor(lens, dtype=torch.int64),
            "ids": torch.from_numpy(cat([s.ids for s in samples]).astype(np.int32)),
            "labels": torch.from_numpy(cat([s.labels for s in samples]).astype(np.int32)),
            "pos0": [int(s.pos0) for s in samples], "source": [int(s.source) for s in samples]}


def samples_from_state(sd: dict) -> list[Sample]:
    ids, labels = sd["ids"].numpy(), sd["labels"].numpy()
    out, off = [], 0
    for n, p0, src in zip(sd["lens"].tolist(), sd["pos0"], sd["source"]):
        out.append(Sample(ids[off:off + n].copy(), labels[off:off + n].copy(), p0, src))
        off += n
    return out


class SourceSpec:
    """What every reader of one source shares: shards, tokenizer checks, policies, counters."""

    def __init__(self, *, index, name, urls, expected, tokenizer, vocab_size, retokenize, added_tokens,
                 paraphrases, seq_len, overlong, split_samples, max_epochs, bad_records,
                 bad_shards, seed, shuffle_shards, shuffle_buffer):
        self.index, self.name, self.urls = index, name, urls
        self.expected = expected  # url -> sample count from the manifest, to catch short shards
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        # "never": stored ids are valid; "added": re-tokenize records containing tokens the
        # training tokenizer added after sharding; paraphrases always re-tokenize.
        self.retokenize = retokenize
        self.added_tokens = [t.encode() for t in added_tokens]
        self.paraphrases = paraphrases
        self.seq_len, self.overlong, self.split_samples = seq_len, overlong, split_samples
        self.max_epochs, self.bad_records, self.bad_shards = max_epochs, bad_records, bad_shards
        self.seed, self.shuffle_shards, self.shuffle_buffer = seed, shuffle_shards, shuffle_buffer
        self.skipped: dict[str, int] = {}
        self.truncated = 0
        self.retokenized = 0

    def skip(self, reason: str, where: str, message: str):
        if self.bad_records == "error" and reason not in ("overlong", "corrupt_shard", "no_loss_tokens"):
            raise DataError(f"{where}: {message}")
        n = self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if n <= LOGGED_PER_REASON:
            log.warning("source %s: skipped %s (%s): %s%s", self.name, where, reason, message,
                        " (further skips of this kind are only counted)" if n == LOGGED_PER_REASON else "")

    def decode(self, url: str, key: str, parts: dict, epoch: int) -> Sample | None:
        """A validated Sample from a shard sample's members, or None after a counted skip."""
        where = f"{url} member {key}"
        raw = parts.get("json")
        retok = False
        instruction = None
        if raw is not None and (self.paraphrases or self.added_tokens):
            retok = any(t in raw for t in self.added_tokens)
            if self.paraphrases:
                try:
                    record = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as e:
                    return self.skip("bad_json", f"{where}.json", f"not valid JSON: {e}")
                choices = self.paraphrases.get(record.get("instruction")) if isinstance(record, dict) else None
                if choices:
                    draw = random.Random(f"{self.seed}|{self.name}|{epoch}|{os.path.basename(url)}|{key}")
                    instruction, retok = draw.choice(choices), True
        if retok:
            try:
                record = json.loads(raw)
                ids, mask = tokenize_messages(self.tokenizer, to_messages(record, instruction))
            except (ValueError, UnicodeDecodeError) as e:
                reason = e.reason if isinstance(e, RecordError) else "bad_json"
                return self.skip(reason, f"{where}.json", str(e))
            self.retokenized += 1
        else:
            if "ids" not in parts or "mask" not in parts:
                missing = [e for e in ("ids", "mask") if e not in parts]
                return self.skip("missing_member", where, f"no .{' .'.join(missing)} member")
            b_ids, b_mask = parts["ids"], parts["mask"]
            if len(b_ids) % 4:
                return self.skip("bad_ids", f"{where}.ids", f"{len(b_ids)} bytes is not a whole number of int32")
            ids = np.frombuffer(b_ids, dtype="<i4")
            mask = np.frombuffer(b_mask, dtype=np.uint8)
            if len(ids) != len(mask):
                return self.skip("length_mismatch", where, f"{len(ids)} ids but {len(mask)} mask entries")
            if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
                return self.skip("token_out_of_range", f"{where}.ids",
                                 f"ids in [{ids.min()}, {ids.max()}], tokenizer has {self.vocab_size}")
        if len(ids) < 2:
            return self.skip("empty", where, f"{len(ids)} tokens")
        if len(ids) > self.seq_len and not self.split_samples:
            if self.overlong == "skip":
                return self.skip("overlong", where, f"{len(ids)} tokens > seq_len {self.seq_len}")
            self.truncated += 1
            ids, mask = ids[:self.seq_len], mask[:self.seq_len]
        labels = shifted_labels(ids, mask)
        if not (labels != IGNORE).any():
            return self.skip("no_loss_tokens", where, "no assistant token to learn from")
        return Sample(np.asarray(ids, dtype=np.int32), labels, 0, self.index)

    def state_dict(self) -> dict:
        return {"skipped": dict(self.skipped), "truncated": self.truncated, "retokenized": self.retokenized}

    def load_state_dict(self, sd: dict):
        self.skipped, self.truncated = dict(sd["skipped"]), sd["truncated"]
        self.retokenized = sd["retokenized"]


class ShardReader:
    """One (rank, worker) slot's view of a source.

    Shards are shuffled per epoch with a seed every slot shares, then dealt round-robin
    to the slots; with fewer shards than slots every slot reads all shards and keeps every
    n-th sample instead, so small downstream sets still reach every rank."""

    def __init__(self, spec: SourceSpec, slot: int, n_slots: int):
        self.spec, self.slot, self.n_slots = spec, slot, n_slots
        self.epoch = self.shard_pos = self.in_shard = self.epoch_counter = 0
        self.epochs_done = self.good_in_epoch = 0
        self.eof = False
        self.buffer: list[Sample] = []
        self._it = None
        self._start_epoch()

    def _start_epoch(self):
        spec, n = self.spec, len(self.spec.urls)
        order = list(range(n))
        if spec.shuffle_shards:
            random.Random(f"{spec.seed}|{spec.name}|shards|{self.epoch}").shuffle(order)
        self.by_sample = n < self.n_slots
        self.shards = [spec.urls[i] for i in (order if self.by_sample else order[self.slot::self.n_slots])]
        self.rng = random.Random(f"{spec.seed}|{spec.name}|buffer|{self.slot}|{self.epoch}")

    def _end_epoch(self):
        spec = self.spec
        if self.good_in_epoch == 0:
            raise DataError(f"source {spec.name}: a whole epoch gave rank/worker slot {self.slot} of "
                            f"{self.n_slots} no usable sample (skips so far: {spec.skipped}); "
                            f"{len(spec.urls)} shard(s) may hold fewer samples than ranks x workers")
        self.epochs_done += 1
        if spec.max_epochs is not None and self.epochs_done >= spec.max_epochs:
            self.eof = True
            return
        self.epoch += 1
        self.shard_pos = self.in_shard = self.epoch_counter = self.good_in_epoch = 0
        self._start_epoch()

    def _next_raw(self):
        while not self.eof:
            if self._it is None:
                if self.shard_pos >= len(self.shards):
                    self._end_epoch()
                    continue
                self._url = self.shards[self.shard_pos]
                self._it = iter_shard(self._url, skip=self.in_shard)
            try:
                try:
                    key, parts = next(self._it)
                except StopIteration:
                    want = self.spec.expected.get(self._url)
                    if want is not None and want != self.in_shard:
                        raise DataError(f"{self._url}: {self.in_shard} samples, but the manifest "
                                        f"lists {want} (shard replaced or truncated?)") from None
                    self._it, self.shard_pos, self.in_shard = None, self.shard_pos + 1, 0
                    continue
            except DataError as e:
                if self.spec.bad_shards == "error":
                    raise
                self.spec.skip("corrupt_shard", self._url, f"rest of shard dropped: {e}")
                self._it, self.shard_pos, self.in_shard = None, self.shard_pos + 1, 0
                continue
            self.in_shard += 1
            counter, self.epoch_counter = self.epoch_counter, self.epoch_counter + 1
            if self.by_sample and counter % self.n_slots != self.slot:
                continue
            return self._url, key, parts
        return None

    def next(self) -> Sample:
        size = max(1, self.spec.shuffle_buffer)
        while len(self.buffer) < size:
            raw = self._next_raw()
            if raw is None:
                break
            sample = self.spec.decode(*raw, epoch=self.epoch)
            if sample is not None:
                self.good_in_epoch += 1
                self.buffer.append(sample)
        if not self.buffer:
            raise SourceExhausted(self.spec.name)
        j = self.rng.randrange(len(self.buffer))
        self.buffer[j], self.buffer[-1] = self.buffer[-1], self.buffer[j]
        return self.buffer.pop()

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "in_shard": self.in_shard,
                "epoch_counter": self.epoch_counter, "epochs_done": self.epochs_done,
                "good_in_epoch": self.good_in_epoch, "eof": self.eof,
                "rng": [version, list(internal), gauss], "buffer": samples_to_state(self.buffer)}

    def load_state_dict(self, sd: dict):
        for k in ("epoch", "shard_pos", "in_shard", "epoch_counter", "epochs_done", "good_in_epoch", "eof"):
            setattr(self, k, sd[k])
        self._start_epoch()
        version, internal, gauss = sd["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.buffer = samples_from_state(sd["buffer"])
        self._it = None


class SourceStream:
    """A source on one rank: its worker slots read in turn, as DataLoader workers would be."""

    def __init__(self, spec: SourceSpec, rank: int, world_size: int, num_workers: int):
        self.spec = spec
        n = world_size * num_workers
        self.readers = [ShardReader(spec, rank * num_workers + w, n) for w in range(num_workers)]
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
        raise SourceExhausted(self.spec.name)

    @property
    def epochs(self) -> int:
        return min(r.epochs_done for r in self.readers)

    def state_dict(self) -> dict:
        return {"turn": self.turn, "spec": self.spec.state_dict(),
                "readers": [r.state_dict() for r in self.readers]}

    def load_state_dict(self, sd: dict):
        if len(sd["readers"]) != len(self.readers):
            raise DataError(f"source {self.spec.name}: state has {len(sd['readers'])} workers, "
                            f"stream has {len(self.readers)}")
        self.turn = sd["turn"]
        self.spec.load_state_dict(sd["spec"])
        for r, s in zip(self.readers, sd["readers"]):
            r.load_state_dict(s)
