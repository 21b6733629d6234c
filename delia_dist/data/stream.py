"""The training stream: sources -> token-budget mixer -> packer -> micro-batches of tensors.

One TrainStream per rank; it knows its rank only as plain arguments. Everything it holds
(reader positions and shuffle buffers per worker, mixer counters, packer leftovers, skip
counters; buffered samples by reference) is in state_dict(), so a restored stream yields
exactly the batches an uninterrupted one would have.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from .decode import IGNORE, DecodeRules
from .errors import DataError
from .mix_plan import sample_targets
from .mixer import TokenMixer
from .packer import Packer
from .reader import SourcePolicy, SourceStream
from .records import fingerprint
from .refs import load_samples
from .sources import load_paraphrases, resolve_shards

log = logging.getLogger("delia_dist.data")
STATE_VERSION = 2  # 2: buffered samples by reference, reader plans of tasks
FILL_INCREMENT = 1000  # samples read between progress checks while filling the shuffle buffers


def check_tokenizer(source: str, where: str, manifest: dict | None, tokenizer) -> list[str]:
    """Tokens the training tokenizer added since sharding: [] when the stored ids match it
    as they are; otherwise records containing these get re-tokenized. Any other difference
    is an error."""
    if manifest is None:
        log.warning("source %s: %s has no manifest; stored ids are only range-checked "
                    "against the training tokenizer", source, where)
        return []
    info = manifest.get("tokenizer") or {}
    theirs, n = info.get("fingerprint"), info.get("vocab_size")
    ours = fingerprint(tokenizer)
    if theirs == ours:
        return []
    if isinstance(n, int) and len(tokenizer) > n and fingerprint(tokenizer, upto=n) == theirs:
        vocab = tokenizer.get_vocab()
        added = sorted((i, t) for t, i in vocab.items() if i >= n)
        return [t for _, t in added]
    raise DataError(f"source {source}: tokenizer mismatch: {where} was sharded with tokenizer "
                    f"{info.get('name_or_path')!r} (fingerprint {theirs}, {n} tokens) but training "
                    f"uses {getattr(tokenizer, 'name_or_path', '?')!r} (fingerprint {ours}, "
                    f"{len(tokenizer)} tokens); re-run `delia data shard` with the training tokenizer")


def source_policy(index: int, s, cfg, tokenizer) -> SourcePolicy:
    """Source `s` of data config `cfg` as the readers see it: its shards and fixed rules."""
    urls, manifest, where = resolve_shards(s.shards)
    if not urls:
        raise DataError(f"source {s.name}: {where} lists no shards")
    added = check_tokenizer(s.name, where, manifest, tokenizer)
    max_epochs = s.max_epochs if s.max_epochs is not None else (1 if s.on_exhausted == "stop" else None)
    if cfg.downstream_once and s.kind == "downstream":
        max_epochs = 1
    rules = DecodeRules(source=index, name=s.name, seed=cfg.seed, vocab_size=len(tokenizer),
                        seq_len=cfg.seq_len, tokenizer=tokenizer,
                        added_tokens=tuple(t.encode() for t in added),
                        paraphrases=(load_paraphrases(s.paraphrases)
                                     if s.paraphrases and s.instructions == "paraphrased" else None),
                        overlong=cfg.overlong, split_samples=cfg.split_samples)
    return SourcePolicy(index=index, name=s.name, urls=tuple(urls), rules=rules,
                        expected={sh["url"]: sh["samples"] for sh in manifest["shards"]} if manifest else {},
                        max_epochs=max_epochs, bad_records=cfg.bad_records, bad_shards=cfg.bad_shards,
                        seed=cfg.seed, shuffle_shards=cfg.shuffle_shards, shuffle_buffer=cfg.shuffle_buffer)


def layout_difference(saved: dict, now: dict) -> str:
    """What differs between a checkpoint's stream layout and this run's, in words."""
    parts = []
    for k, v in now.items():
        old = saved.get(k)
        if old != v:
            parts.append(f"{k}: checkpoint {old!r}, config {v!r}")
    return "; ".join(parts)


class TrainStream:
    """Iterate for dicts of [micro_batch_size, seq_len] tensors: input_ids; labels (-100
    where there is no loss); position_ids, restarting with each packed sample; segment_ids
    (1, 2, ... per packed sample, 0 for padding); source_ids (the source's index, -1 for
    padding)."""

    def __init__(self, cfg, tokenizer, rank: int = 0, world_size: int = 1, micro_batch_size: int = 1,
                 num_workers: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        workers = max(1, cfg.num_workers if num_workers is None else num_workers)
        self.seq_len, self.micro_batch_size = cfg.seq_len, micro_batch_size
        self.source_names = [s.name for s in cfg.sources]
        self._layout = {"rank": rank, "world_size": world_size, "workers": workers,
                        "seq_len": cfg.seq_len, "seed": cfg.seed, "sources": list(self.source_names)}
        self.policies = [source_policy(i, s, cfg, tokenizer) for i, s in enumerate(cfg.sources)]
        self._layout["shards"] = [len(p.urls) for p in self.policies]
        self._layout["shuffle_shards"] = cfg.shuffle_shards
        self.sources = [SourceStream(p, rank, world_size, workers) for p in self.policies]
        targets = sample_targets(cfg)
        once = tuple(i for i, s in enumerate(cfg.sources) if cfg.downstream_once and s.kind == "downstream")
        self.mixer = TokenMixer(self.sources, targets or [s.weight for s in cfg.sources],
                                by_samples=targets is not None, once=once)
        if targets is not None or once:  # absent otherwise, so checkpoints of token-share runs still resume
            self._layout["mix"] = {"by_samples": targets is not None, "once": list(once)}
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.packer = Packer(self.mixer.next, cfg.seq_len, cfg.pack_buffer, cfg.pack,
                             cfg.split_samples, pad_id)
        self.pad_id = pad_id
        self.done = False

    def __iter__(self):
        return self

    def next_arrays(self) -> dict[str, np.ndarray]:
        """The next micro-batch as numpy arrays (what __next__ wraps in tensors)."""
        if self.done:
            raise StopIteration
        b = self.micro_batch_size
        out = self._blank()
        rows = 0
        for r in range(b):
            if not self.packer.fill_row(*(out[k][r] for k in out)):
                break
            rows += 1
        if rows == 0:
            self.done = True
            raise StopIteration
        if rows < b:  # the stream ended mid-batch: the rest of the batch is padding
            self.done = True
        return out

    def _blank(self) -> dict[str, np.ndarray]:
        b, L = self.micro_batch_size, self.seq_len
        return {"input_ids": np.full((b, L), self.pad_id, dtype=np.int64),
                "labels": np.full((b, L), IGNORE, dtype=np.int64),
                "position_ids": np.zeros((b, L), dtype=np.int64),
                "segment_ids": np.zeros((b, L), dtype=np.int32),
                "source_ids": np.full((b, L), -1, dtype=np.int32)}

    def __next__(self):
        import torch
        return {k: torch.from_numpy(v) for k, v in self.next_arrays().items()}

    def fill_buffers(self, every_s: float = 30.0) -> dict[str, int]:
        """Fill every source's shuffle buffers (all workers) before step 1, so that no rank
        reads a whole buffer (70B config: 100,000 samples) at the step where the mixer first
        draws from a source: that step differs between ranks (a 0.01-weight source is first
        visited late and at different steps), and the other ranks would wait for it in the
        step's all-reduce. Afterwards each draw reads one sample. Called after a resume's
        load_state_dict too (it tops up what the state held); the batches are the same as
        without it. Returns samples buffered per source; logs progress every `every_s`."""
        held, t0 = {}, time.monotonic()
        last = t0
        for source, weight in zip(self.sources, self.mixer.weights):
            if weight <= 0:  # never drawn
                continue
            for reader in source.readers:
                while not reader.buffer_full:
                    before = len(reader.buffer)
                    if reader.fill(most=FILL_INCREMENT) == before:
                        break  # the source ended
                    if time.monotonic() - last > every_s:
                        last = time.monotonic()
                        log.info("filling shuffle buffers: source %s, %d samples so far (%.0f s)", source.policy.name,
                                 sum(len(r.buffer) for r in source.readers), last - t0)
            held[source.policy.name] = sum(len(r.buffer) for r in source.readers)
        log.info("shuffle buffers filled before step 1 in %.1f s: %s", time.monotonic() - t0,
                 ", ".join(f"{k} {v} samples" for k, v in held.items()))
        return held

    def empty_batch(self) -> dict:
        """A padding-only micro-batch (no loss tokens): what a rank whose data ended feeds
        while the others finish theirs (data.downstream_once)."""
        import torch
        return {k: torch.from_numpy(v) for k, v in self._blank().items()}

    def stats(self) -> dict:
        """Per-source counters on this rank: samples, tokens, epochs, skipped by reason."""
        return {s.policy.name: {"samples": self.mixer.samples[i], "tokens": self.mixer.tokens[i],
                                "epochs": s.epochs, "skipped": dict(s.counters.skipped),
                                "truncated": s.counters.truncated, "retokenized": s.counters.retokenized}
                for i, s in enumerate(self.sources)}

    @property
    def packing_efficiency(self) -> float:
        """Share of non-padding tokens in the rows emitted so far."""
        return self.packer.efficiency

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "layout": dict(self._layout), "done": self.done,
                "sources": [s.state_dict() for s in self.sources],
                "mixer": self.mixer.state_dict(), "packer": self.packer.state_dict()}

    def load_state_dict(self, sd: dict):
        """Restore a state saved with this layout (a state of another world size goes through
        remap_stream_states first); sources, shards or seq_len that changed are an error."""
        if sd.get("version") != STATE_VERSION:
            raise DataError(f"data stream state version {sd.get('version')} != {STATE_VERSION} "
                            f"(saved by another delia version); it cannot be resumed")
        if sd["layout"] != self._layout:
            raise DataError(f"the data stream in the checkpoint does not match the config: "
                            f"{layout_difference(sd['layout'], self._layout)}")
        for s, st in zip(self.sources, sd["sources"]):
            s.load_state_dict(st, self.policies)
        self.mixer.load_state_dict(sd["mixer"])
        self.packer.load_state_dict(sd["packer"], lambda refs: load_samples(self.policies, refs))
        self.done = sd["done"]


def build_train_stream(cfg, tokenizer, rank: int = 0, world_size: int = 1, micro_batch_size: int = 1,
                       num_workers: int | None = None) -> TrainStream:
    """The stream for one rank; `cfg` is the config's data section, `tokenizer` the training
    tokenizer (with any new special tokens already added)."""
    return TrainStream(cfg, tokenizer, rank, world_size, micro_batch_size, num_workers)
