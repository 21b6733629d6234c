"""Elastic resume of the data stream: every old rank's state -> one state per new rank.

Pure (no torch.distributed): the checkpoint loader gathers the old ranks' stream states,
calls `remap_stream_states`, and each new rank loads its entry. Within the epoch in
progress no sample is trained twice and none is skipped:

* each old slot's unread part of the epoch becomes (epoch, shard, start, step) tasks: the
  rest of the shard it was reading, its remaining shards, and its whole share of any later
  epoch another slot has already entered;
* these tasks are dealt round-robin to the new (rank, worker) slots (split by member
  stride when there are fewer tasks than slots), which read them as a one-off plan and
  then continue with the next epoch in the new layout;
* samples held in shuffle buffers and packer leftovers go back to the pool as references
  and are dealt to the new slots' buffers and the new ranks' packers.

The order differs from an uninterrupted run on either size; the set of samples does not.
Mixer, packer and skip counters are summed and split so per-source token shares carry on.
"""
from __future__ import annotations

import copy

from .errors import DataError
from .reader import normal_tasks
from .refs import refs_state_from, state_refs
from .stream import STATE_VERSION


def _check(old_states: list[dict], new_world_size: int) -> dict:
    if not old_states:
        raise DataError("remap_stream_states: no data stream states to remap")
    if new_world_size < 1:
        raise DataError(f"remap_stream_states: new world size {new_world_size} < 1")
    first = old_states[0]["layout"]
    for rank, sd in enumerate(old_states):
        if sd.get("version") != STATE_VERSION:
            raise DataError(f"data stream state of rank {rank} has version {sd.get('version')}, "
                            f"expected {STATE_VERSION}")
        lay = sd["layout"]
        if lay["rank"] != rank or lay["world_size"] != len(old_states):
            raise DataError(f"data stream states out of order: entry {rank} is rank {lay['rank']} "
                            f"of {lay['world_size']}, but {len(old_states)} states were given")
        diff = [k for k in first if k != "rank" and lay.get(k) != first[k]]
        if diff:
            raise DataError(f"data stream state of rank {rank} differs from rank 0's in {diff}")
    return first


def _remaining(tasks, task: int, in_shard: int) -> list[tuple]:
    """Unread tasks of a plan: the current one from member in_shard on, and those after it."""
    if task >= len(tasks):
        return []
    epoch, shard, start, step = tasks[task]
    m = max(in_shard, start)
    first = start + -(-(m - start) // step) * step
    return [(epoch, shard, first, step)] + [tuple(t) for t in tasks[task + 1:]]


def _deal(items: list, n: int) -> list[list]:
    return [items[j::n] for j in range(n)]


def _split_even(total: int, n: int) -> list[int]:
    return [total // n + (1 if j < total % n else 0) for j in range(n)]


def remap_source(layout: dict, index: int, old_readers: list[dict], n_new: int) -> list[dict]:
    """New reader states (one per new slot) for source `index`; old_readers[slot] is each
    old slot's reader state."""
    name, n_shards = layout["sources"][index], layout["shards"][index]
    seed, shuffle, n_old = layout["seed"], layout["shuffle_shards"], len(old_readers)
    last = max(sd["epoch"] for sd in old_readers)
    items, buffered = [], []
    for slot, sd in enumerate(old_readers):
        buffered += state_refs(sd["buffer"])
        if sd["eof"]:
            continue
        tasks = sd["tasks"] if sd["tasks"] is not None else \
            normal_tasks(name, seed, n_shards, shuffle, slot, n_old, sd["epoch"])
        items += _remaining(tasks, sd["task"], sd["in_shard"])
        for epoch in range(sd["epoch"] + 1, last + 1):
            items += normal_tasks(name, seed, n_shards, shuffle, slot, n_old, epoch)
    items.sort(key=lambda t: t[0])  # older epochs first on every new slot
    if 0 < len(items) < n_new:
        q = -(-n_new // len(items))
        items = [(e, s, start + i * step, step * q) for e, s, start, step in items for i in range(q)]
    return [{"epoch": last, "task": 0, "in_shard": 0, "tasks": [list(t) for t in mine],
             "epochs_done": last, "good_in_epoch": 0, "eof": False, "rng": None,
             "buffer": refs_state_from(buf)}
            for mine, buf in zip(_deal(items, n_new), _deal(buffered, n_new))]


def remap_stream_states(old_states: list[dict], new_world_size: int) -> list[dict]:
    """One stream state per new rank from every old rank's state (index = old rank), such
    that the epoch in progress is finished exactly once across the new ranks."""
    layout = _check(old_states, new_world_size)
    if new_world_size == len(old_states):
        return [copy.deepcopy(sd) for sd in old_states]
    workers, n_src = layout["workers"], len(layout["sources"])
    n_new = new_world_size * workers
    new = [{"version": STATE_VERSION, "layout": dict(layout, rank=r, world_size=new_world_size),
            "done": all(sd["done"] for sd in old_states), "sources": [], "mixer": {}, "packer": {}}
           for r in range(new_world_size)]
    for i in range(n_src):
        old_readers = [r for sd in old_states for r in sd["sources"][i]["readers"]]
        readers = remap_source(layout, i, old_readers, n_new)
        counters = [sd["sources"][i]["spec"] for sd in old_states]
        skipped: dict[str, int] = {}
        for c in counters:
            for k, v in c["skipped"].items():
                skipped[k] = skipped.get(k, 0) + v
        summed = {"skipped": skipped, "truncated": sum(c["truncated"] for c in counters),
                  "retokenized": sum(c["retokenized"] for c in counters)}
        zero = {"skipped": {}, "truncated": 0, "retokenized": 0}
        for r, sd in enumerate(new):
            sd["sources"].append({"turn": 0, "spec": summed if r == 0 else zero,
                                  "readers": readers[r * workers:(r + 1) * workers]})
    for key in ("tokens", "samples"):
        per_source = [_split_even(sum(sd["mixer"][key][i] for sd in old_states), new_world_size)
                      for i in range(n_src)]
        for r, sd in enumerate(new):
            sd["mixer"][key] = [per_source[i][r] for i in range(n_src)]
    pending = [ref for sd in old_states for ref in state_refs(sd["packer"]["pending"])]
    rows = _split_even(sum(sd["packer"]["rows"] for sd in old_states), new_world_size)
    tokens = _split_even(sum(sd["packer"]["tokens"] for sd in old_states), new_world_size)
    for r, (sd, mine) in enumerate(zip(new, _deal(pending, new_world_size))):
        sd["packer"] = {"pending": refs_state_from(mine), "eof": False, "rows": rows[r], "tokens": tokens[r]}
    return new
