"""Buffered samples in a checkpoint by reference: (source, epoch, shard, member, offset).

A shuffle buffer of 100000 samples of ~1k tokens is ~800 MB of token arrays per reader
slot; as references it is 20 bytes a sample. On resume the members are read again from
their shards (each shard once, in member order) and decoded with the same pure `decode`,
which gives the same arrays: decoding depends only on the member bytes, the epoch and the
source's fixed rules. A member that no longer decodes means the shard changed under the
checkpoint, which is an error naming it. The price is read time on resume: each shard a
buffered sample came from is read up to its last referenced member (bench/bench_data.py
prints it: 0.7 s CPU for a 2000-sample buffer from a 43 MiB shard).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .decode import Sample, Skip, decode
from .errors import DataError
from .shards import iter_shard

FIELDS = ("source", "epoch", "shard", "member", "pos0")
REF_BYTES = 4 * len(FIELDS)  # int32 each


def refs_to_state(samples) -> dict:
    """Int32 tensors, one entry per sample, loadable with torch.load(weights_only=True)."""
    return refs_state_from([(s.source, *s.ref, s.pos0) for s in samples])


def state_refs(sd: dict) -> list[tuple]:
    """(source, epoch, shard, member, pos0) per referenced sample, in order."""
    cols = [sd[f].tolist() for f in FIELDS]
    return list(zip(*cols))


def refs_state_from(refs: list[tuple]) -> dict:
    import torch
    arr = np.asarray(refs, dtype=np.int32).reshape(len(refs), len(FIELDS))
    return {f: torch.from_numpy(arr[:, i].copy()) for i, f in enumerate(FIELDS)}


def load_samples(policies, sd: dict) -> list[Sample]:
    """The Samples a refs state names, re-read from their shards. `policies[i]` is source i's
    SourcePolicy (urls and decode rules)."""
    refs = state_refs(sd)
    wanted: dict[tuple, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (src, epoch, shard, member, _) in enumerate(refs):
        if not 0 <= src < len(policies) or not 0 <= shard < len(policies[src].urls):
            raise DataError(f"data stream state refers to source {src} shard {shard}, which the "
                            f"configured sources do not have")
        wanted[(src, epoch, shard)][member].append(i)
    out: list[Sample | None] = [None] * len(refs)
    for (src, epoch, shard), members in wanted.items():
        policy = policies[src]
        url = policy.urls[shard]
        left, m = len(members), min(members)
        for key, parts in iter_shard(url, skip=m):
            if m in members:
                got = decode(policy.rules, url, key, parts, epoch)
                if isinstance(got, Skip):
                    raise DataError(f"{got.where}: buffered in the checkpoint but now unusable "
                                    f"({got.reason}: {got.message}); was the shard changed?")
                for i in members[m]:
                    sample = got.sample
                    sample.ref = (epoch, shard, m)
                    pos0 = refs[i][4]
                    out[i] = sample.tail(pos0) if pos0 else sample
                left -= 1
                if not left:
                    break
            m += 1
        if left:
            raise DataError(f"{url}: the checkpoint refers to member {max(members)} (epoch {epoch}), "
                            f"but the shard ends before it; was the shard changed?")
    return out


# Measured with torch.save of real states (tests/data/test_data_state_size.py keeps these
# an upper bound within 25%): per rank (layout, mixer, packer counters), per source
# (counters), per reader slot (its RNG state of 625 ints, tensor headers).
RANK_OVERHEAD, SOURCE_OVERHEAD, SLOT_OVERHEAD = 4096, 512, 5120
ARRAY_BYTES_PER_TOKEN = 8  # the old layout: int32 ids + int32 labels per buffered token


def stream_state_bytes(shuffle_buffer: int, num_workers: int, seq_len: int, n_sources: int = 1,
                       pack_buffer: int = 64, tokens_per_sample: int | None = None,
                       by_reference: bool = True) -> int:
    """Upper bound of one rank's serialized data stream state, with every shuffle buffer full.

    Every source has `num_workers` reader slots, each buffering `shuffle_buffer` samples,
    and the packer holds `pack_buffer` more. By reference (this version) a sample costs
    REF_BYTES whatever its length; with `by_reference=False` it counts the previous layout,
    which stored each sample's ids and labels (`tokens_per_sample`, at most seq_len, the
    default) - for `delia plan` to show what the change saves."""
    slots = n_sources * max(1, num_workers)
    if by_reference:
        per_sample = REF_BYTES
    else:
        per_sample = ARRAY_BYTES_PER_TOKEN * min(seq_len, tokens_per_sample or seq_len) + 3 * 8
    return (RANK_OVERHEAD + n_sources * SOURCE_OVERHEAD + slots * SLOT_OVERHEAD
            + (slots * shuffle_buffer + pack_buffer) * per_sample)
