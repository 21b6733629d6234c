"""What breaks first at 64 GPUs, checked with real process groups on CPU (see ranks.py):
host collectives on a group that rejects CPU tensors (as NCCL does), a rendezvous that
outlasts the collective timeout, loss normalised by the global loss-token count, and the
host syncs of one step."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from portutil import free_port  # noqa: E402
from ranks import LOSS_TOKENS, micro_batches  # noqa: E402


def run_ranks(scenario: str, world: int, out: Path, env_extra: dict | None = None, timeout: float = 300) -> list[dict]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    procs = [subprocess.Popen([sys.executable, str(HERE / "ranks.py"), scenario, str(r), str(world), str(port),
                               str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n" + "\n".join(l[-3000:] for l in logs)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def test_host_collectives_work_on_a_group_that_rejects_cpu_tensors(tmp_path):
    """Fails before the fix: any_rank & co. sent CPU tensors over the default group, which
    under NCCL (here: gloo registered for cuda only) has no CPU backend."""
    r0, r1 = run_ranks("groups", 2, tmp_path)
    for r in (r0, r1):
        assert r["rejects_cpu"] and r["any"] is True and r["all"] is False and r["max"] == 10.0
        assert r["sum"] == [2.0, 1.0] and r["gather"] == [{"r": 0}, {"r": 1}] and r["bcast"] == {"from": 0}


@pytest.fixture
def cpu_hog():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield hog
    hog.kill()
    hog.wait()


@pytest.mark.parametrize("late", [0, 1])
def test_late_rank_meets_within_rendezvous_timeout_not_collective_timeout(tmp_path, cpu_hog, late):
    """One rank starts 12 s late, the collective timeout is 3 s. Before the fix the TCPStore
    rendezvous was bounded by the collective timeout: with rank 0 (the store's host) late,
    rank 1 failed with "The client socket has timed out after 3000ms"."""
    env = {"DELIA_TEST_LATE_RANK": str(late), "DELIA_TEST_LATE": "12", "DELIA_TEST_COLLECTIVE_TIMEOUT": "3",
           "DELIA_RENDEZVOUS_TIMEOUT": "240"}
    r0, r1 = run_ranks("rendezvous", 2, tmp_path, env)
    assert r0 == r1 == {"sum": [2.0, 2.0], "any": True}


def test_checkpoint_io_outlasts_the_collective_timeout_only_inside_save_and_load(tmp_path):
    """A save at 70B keeps ranks in one barrier for minutes; before the fix it ran under the
    job's collective timeout. Here: timeout 3 s, one rank 6 s late."""
    r0, _ = run_ranks("io_timeout", 2, tmp_path)
    assert r0["inside"] == "ok"
    assert r0["outside"] != "ok" and "timed out" in r0["outside"].lower(), r0["outside"]


@pytest.fixture(scope="module")
def reference_step(tmp_path_factory):
    """Two ranks x grad_accum 2 and one rank x grad_accum 4, same four micro-batches."""
    out = {}
    for world in (2, 1):
        d = tmp_path_factory.mktemp(f"world{world}")
        ranks = run_ranks("step", world, d, timeout=600)
        out[world] = (ranks, torch.load(d / "weights.pt", weights_only=True))
    return out


def _sgd_reference(before: dict) -> dict:
    """One SGD step (lr 1) of plain torch on d(sum of all token losses)/d(theta) / count."""
    from ranks import VOCAB

    from delia_dist.model.tiny import build_model, llama_config
    model = build_model(llama_config(VOCAB), seed=0)
    model.load_state_dict({k.removeprefix("model."): v for k, v in before.items()})
    total = 0.0
    for b in micro_batches():
        logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits.float()
        total = total + torch.nn.functional.cross_entropy(logits.view(-1, VOCAB), b["labels"].view(-1),
                                                          ignore_index=-100, reduction="sum")
    (total / sum(LOSS_TOKENS)).backward()
    return {"model." + n: (p - p.grad).detach() for n, p in model.named_parameters()}


def test_two_ranks_grad_accum_2_step_equals_one_process_over_the_same_tokens(reference_step):
    """Fails before the fix (loss divided by each micro-batch's own token count): with 2, 31,
    7 and 25 loss tokens the micro-batches would weigh equally instead of by their tokens."""
    expected = _sgd_reference(reference_step[1][1]["before"])
    for world in (2, 1):
        ranks, w = reference_step[world]
        assert all(r["plan_loss_tokens"] == sum(LOSS_TOKENS) for r in ranks)
        torch.testing.assert_close(w["before"], reference_step[1][1]["before"], rtol=0, atol=0)
        moved = max((w["after"][k] - w["before"][k]).abs().max().item() for k in expected)
        assert moved > 1e-3  # the step really changed the weights
        for k in expected:
            torch.testing.assert_close(w["after"][k], expected[k], rtol=1e-5, atol=1e-6, msg=f"world {world}: {k}")


def test_one_collective_per_step_and_no_host_sync_until_the_log_step(reference_step):
    """The step itself: one host all-reduce (data left + counts), no collective and no
    device-to-host read in forward/backward; the log step: one all-reduce, one copy."""
    ranks, _ = reference_step[2]
    for r in ranks:
        assert r["agree_collectives"] == 1 and r["step_collectives"] == 0 and r["step_syncs"] == []
        assert r["flush_collectives"] == 1 and r["flush_cpu_reads"] == 1
        assert [rec["step"] for rec in r["records"]] == [1, 2]
        assert r["records"][0]["loss"] == r["records"][1]["loss"] > 0
