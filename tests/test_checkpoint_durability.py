"""A checkpoint is durable before it is named: every file and the step directory are
fsynced before the directory's rename, and `latest` moves only after that rename is itself
fsynced. Checked on a real DeepSpeed ZeRO-3 engine (one gloo rank in this process) by
recording os.fsync / os.replace in order."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="module")
def engine():
    import deepspeed
    import torch.distributed as dist
    from portutil import free_port
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    eng, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config={
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}}})
    yield eng
    dist.destroy_process_group()


def test_files_and_dirs_are_fsynced_before_the_renames(engine, tiny_tokenizer, tmp_path, monkeypatch):
    from delia_dist.checkpoint.manager import CheckpointManager
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", os.path.abspath(src), os.path.abspath(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    root = tmp_path / "ckpts"
    final = CheckpointManager(root, keep_last=2).save(engine, 3, {"rng": torch.zeros(2)}, {"step": 3}, tiny_tokenizer)

    tmp = str(root / ".tmp-step_3")
    renames = [i for i, e in enumerate(events) if e[0] == "replace" and e[1] == tmp]
    assert len(renames) == 1 and events[renames[0]][2] == str(final)
    before = set()  # names whose content is on disk: fsynced, or renamed from a fsynced name
    for e in events[:renames[0]]:
        if e[0] == "fsync":
            before.add(e[1])
        elif e[1] in before:
            before.add(e[2])
    files = [p for p in final.rglob("*") if p.is_file()]
    assert len(files) >= 5  # DeepSpeed model + optimizer shards, rank_0.pt, trainer_state.json, tokenizer
    for p in files:
        assert tmp + str(p)[len(str(final)):] in before, f"{p.name} not fsynced before the rename"
    for d in [p for p in final.rglob("*") if p.is_dir()]:
        assert tmp + str(d)[len(str(final)):] in before, f"directory {d} not fsynced before the rename"
    assert tmp + "/COMPLETE" in before
    last_dir_sync = max(i for i, e in enumerate(events[:renames[0]]) if e == ("fsync", tmp))
    assert any(e[0] == "replace" and e[2] == tmp + "/COMPLETE" for e in events[:last_dir_sync]), \
        "the step directory was not fsynced after COMPLETE was added"

    latest = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(root / "latest")]
    assert len(latest) == 1 and latest[0] > renames[0]
    src = events[latest[0]][1]
    between = events[renames[0] + 1:latest[0]]
    assert ("fsync", str(root)) in between, "the step dir's new name was not fsynced before latest moved"
    assert ("fsync", src) in between, "latest's content was not fsynced before the rename"
    assert ("fsync", str(root)) in events[latest[0] + 1:], "latest's new name was not fsynced"
    assert (root / "latest").read_text() == "step_3"


def test_atomic_write_leaves_old_content_when_the_write_fails(tmp_path, monkeypatch):
    from delia_dist import atomic
    target = tmp_path / "latest"
    atomic.write_text(target, "step_1")

    def broken_fsync(fd):
        raise OSError(5, "I/O error")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        atomic.write_text(target, "step_2")
    assert target.read_text() == "step_1"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "latest"]
    assert all(n.startswith(".latest.tmp") for n in leftovers)
