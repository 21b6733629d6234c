"""Storage faults say what happened: each cause (full disk, quota, read-only, permission)
becomes one line naming what was written, where, and for a full disk the bytes needed
against the bytes free; torch's zip writer, which drops the errno, is named too. Real
faults where the machine allows: a small tmpfs, a read-only bind mount (root), a
directory a non-root user may not write."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from delia_dist import storage
from delia_dist.checkpoint import room
from delia_dist.checkpoint.manager import CheckpointManager

REPO = Path(__file__).resolve().parents[1]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mount and setpriv need root")


@contextlib.contextmanager
def mounted(point: Path, *args: str):
    point.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", *args, str(point)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} failed: {proc.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def tmpfs(point: Path, size: int):
    return mounted(point, "-t", "tmpfs", "-o", f"size={size}", "tmpfs")


def read_only(src: Path, point: Path):
    src.mkdir(parents=True, exist_ok=True)
    return mounted(point, "-o", "bind,ro", str(src))


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on device"),
                                         (errno.EDQUOT, "disk quota exceeded"),
                                         (errno.EROFS, "read-only filesystem"),
                                         (errno.EACCES, "permission denied")])
def test_each_cause_is_one_line_with_what_and_where(tmp_path, code, words):
    with pytest.raises(storage.StorageError) as info:
        with storage.writing("checkpoint step_20", tmp_path, need=3_000_000):
            raise OSError(code, os.strerror(code), str(tmp_path / "x.pt"))
    line = str(info.value)
    assert line.startswith(f"cannot write checkpoint step_20 in {tmp_path}: {words}") and "\n" not in line
    assert ("(needs 3.0 MB, " in line) == (code in (errno.ENOSPC, errno.EDQUOT))
    assert isinstance(info.value.__cause__, OSError)  # the original stays chained for DELIA_DEBUG


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        with storage.writing("checkpoint step_2", tmp_path):
            raise RuntimeError("Connection closed by peer")
    with pytest.raises(FileNotFoundError):
        with storage.writing("checkpoint step_2", tmp_path):
            open(tmp_path / "missing" / "x")


@root_only
def test_torch_zip_writer_on_a_full_disk_is_named(tmp_path):
    with tmpfs(tmp_path / "raw", 256 << 10) as raw_disk:
        with pytest.raises(RuntimeError, match="inline_container|PytorchStreamWriter") as raw:
            torch.save(torch.zeros(1 << 20), raw_disk / "raw.pt")  # what the user saw before: no errno
    with tmpfs(tmp_path / "disk", 256 << 10) as disk:
        with pytest.raises(storage.StorageError) as info:
            with storage.writing("checkpoint step_20", disk, need=4 << 20):
                torch.save(torch.zeros(1 << 20), disk / "rank_0.pt")
    line = str(info.value)
    assert line.startswith(f"cannot write checkpoint step_20 in {disk}: no space left on device (needs 4.2 MB, "
                           "262.1 kB free when it began, "), (line, str(raw.value))


@root_only
def test_read_only_bind_mount_is_named_for_torch_and_plain_writes(tmp_path):
    with read_only(tmp_path / "src", tmp_path / "ro") as ro:
        for write in (lambda: torch.save({"a": 1}, ro / "rank_0.pt"), lambda: (ro / "state.json").write_text("{}")):
            with pytest.raises(storage.StorageError, match=rf"^cannot write checkpoint step_2 in {ro}: "
                                                           "read-only filesystem$"):
                with storage.writing("checkpoint step_2", ro):
                    write()
        assert storage.unwritable({"run files": tmp_path, "checkpoints": ro / "ckpt"}) == \
            f"cannot write checkpoints in {ro / 'ckpt'}: read-only filesystem (cannot create it)"
        assert storage.unwritable({"run files": tmp_path}) is None


@root_only
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv not installed")
def test_permission_denied_for_a_non_root_user():
    top = Path(tempfile.mkdtemp(prefix="delia-perm-"))  # outside pytest's 0700 tree, so nobody can reach it
    try:
        top.chmod(0o755)
        d = top / "ckpt"
        d.mkdir(mode=0o755)  # root's: nobody may enter, not write
        code = ("import sys, torch\nfrom delia_dist import storage\nd = sys.argv[1]\n"
                "print(storage.unwritable({'checkpoints': d}))\n"
                "try:\n    with storage.writing('checkpoint step_2', d):\n        torch.save({'a': 1}, d + '/r.pt')\n"
                "except storage.StorageError as e:\n    print(e)\n")
        proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                               "-c", code, str(d)], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO), "HOME": str(top)}, timeout=120)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [f"cannot write checkpoints in {d}: permission denied",
                                        f"cannot write checkpoint step_2 in {d}: permission denied"], proc.stdout


def fake_checkpoint(root: Path, step: int, nbytes: int) -> Path:
    d = root / f"step_{step}"
    d.mkdir(parents=True)
    (d / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(os.urandom(nbytes))
    (d / "COMPLETE").write_text(str(step))
    return d


def cfg(check_space: bool = True):
    return SimpleNamespace(checkpoint=SimpleNamespace(check_space=check_space))


@root_only
def test_room_is_made_then_a_save_that_cannot_fit_is_refused_before_it_writes(tmp_path):
    with tmpfs(tmp_path / "disk", 1 << 20) as disk:
        fake_checkpoint(disk, 1, 200_000)
        fake_checkpoint(disk, 2, 300_000)
        (disk / ".tmp-step_3").mkdir()  # a failed save's leftover
        (disk / ".tmp-step_3" / "part.pt").write_bytes(os.urandom(200_000))
        (disk / "latest").write_text("step_2")
        manager = CheckpointManager(disk, keep_last=2)
        with room.for_checkpoint(manager, 3, cfg(), world=1):  # 1 MB - 300 kB free: fits
            pass
        assert sorted(p.name for p in disk.iterdir()) == ["latest", "step_2"]  # step_1: beyond keep_last
        (disk / "filler").write_bytes(os.urandom(600_000))
        with pytest.raises(storage.StorageError) as info:
            with room.for_checkpoint(manager, 3, cfg(), world=1):
                raise AssertionError("a save that cannot fit must not start")
        line = str(info.value)
        need = storage.size_on_disk(disk / "step_2")  # the previous checkpoint, as allocated
        assert re.fullmatch(rf"cannot write checkpoint step_3 in {disk}: no space left on device \(needs "
                            rf"{storage.fmt_bytes(need)}, \d+\.\d kB free, step_2 kept as latest; nothing written: "
                            r"free space, lower checkpoint.keep_last or move checkpoint.dir\)", line), line
        assert (disk / "latest").read_text() == "step_2" and (disk / "step_2" / "COMPLETE").is_file()
        with room.for_checkpoint(manager, 3, cfg(check_space=False), world=1):  # statvfs not trusted: no refusal
            pass


def test_first_checkpoint_needs_plans_estimate():
    from delia_dist.config import load_config
    from delia_dist.plan import checkpoint_bytes, plan
    c = load_config(REPO / "configs/llama3_70b.yaml")
    p = plan(c, nodes=8, gpus_per_node=8)
    whole = next(v for k, v in p.storage_gb.items() if k.startswith("checkpoint: whole step dir"))
    assert checkpoint_bytes(c, 64) == pytest.approx(whole * 1e9, rel=1e-12)
    assert 0.9e12 < checkpoint_bytes(c, 64) < 1.1e12  # 70.6B params full fine-tuned, bf16 + fp32 Adam: 14 B each
    # keep_last=2: the older one goes after the new one is complete, so two step dirs at once.
    assert p.storage_gb["checkpoint dir at its fullest (keep_last=2, during a save)"] == pytest.approx(2 * whole)
    c.checkpoint.keep_last = 1  # the newest stays until the new one is complete: still two
    fullest = plan(c, nodes=8, gpus_per_node=8).storage_gb["checkpoint dir at its fullest (keep_last=1, during a save)"]
    assert fullest == pytest.approx(2 * whole)


@root_only
def test_data_shard_on_a_full_disk_is_one_line_and_exit_74(tmp_path, tiny_tokenizer_dir):
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"prompt": f"question {i} " * 20, "response": "answer " * 40}) + "\n"
                               for i in range(400)))
    with tmpfs(tmp_path / "disk", 64 << 10) as disk:
        proc = subprocess.run([sys.executable, "-m", "delia_dist.cli", "data", "shard", str(records), "--tokenizer",
                               str(tiny_tokenizer_dir), "--out", str(disk / "shards"), "--no-progress"],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 74, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: cannot write data shards in {disk / 'shards'}: no space left on device ("), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@root_only
def test_event_log_warning_names_the_cause(tmp_path, caplog):
    from delia_dist.tracking.eventlog import EventLog
    with read_only(tmp_path / "src", tmp_path / "ro") as ro:
        log = EventLog(ro)
        log._append([b'{"m": []}\n'])
    assert f"cannot write the tracking event log mlflow-events.jsonl in {ro}: read-only filesystem; tracking " \
           "events are held in memory" in caplog.text


@root_only
def test_universal_conversion_that_cannot_fit_comes_back_as_its_line(tmp_path):
    """The conversion runs in a child interpreter; its one line reaches rank 0 through a pipe."""
    from delia_dist.checkpoint import elastic
    with tmpfs(tmp_path / "disk", 512 << 10) as disk:
        step = disk / "step_2"
        step.mkdir()
        (step / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(os.urandom(300_000))
        with pytest.raises(storage.StorageError) as info:
            elastic.ensure_universal(step, rank=0, wait_s=1)
        assert not (step / elastic.UNIVERSAL).exists()
    assert re.fullmatch(rf"cannot write the universal conversion of step_2 in {step}: no space left on device "
                        r"\(needs 300.0 kB, \d+\.\d kB free, needed once to resume at another world size\)",
                        str(info.value)), str(info.value)
