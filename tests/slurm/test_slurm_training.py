"""`sbatch slurm/delia_tiny.sh` on a real Slurm: 2 ranks of ZeRO-3 on one node and across
two nodes, a preempted job that checkpoints, requeues and resumes with the same losses
as an uninterrupted run, and a job that loses a node and fails within its timeout
instead of hanging, then resumes from its last complete checkpoint when resubmitted.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "slurm" / "delia_tiny.sh")
STEPS = 24
# Each job pays ~30 s of imports and DeepSpeed setup on 2 shared cores before step 1.
# A hang guard, not a speed check: raise it on a loaded machine (DELIA_SLURM_JOB_TIMEOUT).
JOB_TIMEOUT = float(os.environ.get("DELIA_SLURM_JOB_TIMEOUT", 900))


def submit(slurm, ws: Path, name: str, *overrides: str, sbatch_args=(), env=None) -> str:
    sets = [f"run_dir=runs/{name}", "checkpoint.every_steps=1000", *overrides]
    return slurm.sbatch("-o", str(ws / f"{name}.out"), "--export=ALL", *sbatch_args, SCRIPT, cwd=ws,
                        env={"DELIA_ROOT": str(REPO), "DELIA_OVERRIDES": " ".join(sets),
                             "DELIA_DIST_TIMEOUT": "60", **(env or {})})


def metrics(ws: Path, name: str) -> list[dict]:
    path = ws / "runs" / name / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.is_file() else []


def losses(ws: Path, name: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(ws, name) if r["step"] > 0}


def output(ws: Path, name: str) -> str:
    return (ws / f"{name}.out").read_text()


def wait_for_step(slurm, ws: Path, name: str, job: str, step: int, timeout: float = JOB_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if max(losses(ws, name), default=0) >= step:
            return
        state = slurm.job(job).get("JobState")
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"job {job} {state}:\n{output(ws, name)[-4000:]}"
        time.sleep(0.3)
    raise TimeoutError(f"job {job} did not reach step {step}:\n{output(ws, name)[-4000:]}")


def finished(slurm, ws: Path, name: str, job: str, timeout: float = JOB_TIMEOUT) -> dict:
    info = slurm.wait_job(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"},
                          timeout)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{output(ws, name)[-5000:]}"
    return info


def mlflow_runs(text: str) -> list[str]:
    return re.findall(r"\[delia\] training \w+ at step \d+; .*; mlflow run (\S+)", text)


@pytest.fixture(scope="module")
def straight(slurm, workspace):
    """One uninterrupted 2-rank ZeRO-3 job on one node: the reference run."""
    job = submit(slurm, workspace, "straight", f"train.max_steps={STEPS}")
    info = finished(slurm, workspace, "straight", job)
    return info


def test_tiny_job_trains_two_ranks_zero3_to_completion(straight, workspace):
    rows = metrics(workspace, "straight")
    assert rows[0]["step"] == 0 and rows[0]["params/max_rank_fraction"] <= 0.55  # ZeRO-3: half each
    loss = losses(workspace, "straight")
    assert sorted(loss) == list(range(1, STEPS + 1))
    assert sum(loss[s] for s in (STEPS - 1, STEPS)) / 2 < sum(loss[s] for s in (1, 2)) / 2 - 0.5, loss
    text = output(workspace, "straight")
    assert "[rank 0] slurm: rank 0/2" in text and "[rank 1] slurm: rank 1/2" in text
    assert f"training completed at step {STEPS}" in text
    ckpts = workspace / "runs" / "straight" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == f"step_{STEPS}"


def test_preempted_job_checkpoints_requeues_and_resumes_with_identical_losses(slurm, workspace, straight):
    name = "preempt"
    job = submit(slurm, workspace, name, f"train.max_steps={STEPS}")
    wait_for_step(slurm, workspace, name, job, 3)
    # What Slurm does ahead of the time limit with --signal=B:USR1@N, without the wait.
    slurm.scancel("--signal=USR1", "--batch", job)
    slurm._wait(lambda: slurm.job(job).get("JobState") == "PENDING" and slurm.job(job).get("Restarts") == "1",
                120, f"job {job} to requeue", detail=lambda: output(workspace, name)[-4000:])
    latest = (workspace / "runs" / name / "checkpoints" / "latest").read_text().strip()
    stopped_at = int(latest.removeprefix("step_"))
    assert 3 <= stopped_at < STEPS, output(workspace, name)
    assert f"training preempted at step {stopped_at}" in output(workspace, name)
    assert max(losses(workspace, name)) == stopped_at

    # Slurm holds a requeued job for cred_expire (120 s) so that no node still holds the
    # revoked credential of its last run; slurmd compares in whole seconds, so a launch in
    # the second of the revocation fails ("Job credential revoked"). Release it early,
    # but only once the node is idle (revocation done) and a later second has begun.
    slurm._wait(lambda: slurm.hostname in slurm.idle_nodes(), 60, "node idle after requeue")
    slurm.scontrol("update", f"JobId={job}", "StartTime=now+2")
    info = finished(slurm, workspace, name, job)
    assert info["Restarts"] == "1"
    text = output(workspace, name)
    assert f"resumed from runs/{name}/checkpoints/step_{stopped_at}" in text
    assert "restart 1" in text
    # Every step exactly once, and the same numbers as the run nobody interrupted.
    steps = [r["step"] for r in metrics(workspace, name)]
    assert steps == list(range(0, STEPS + 1)), steps
    ref, got = losses(workspace, "straight"), losses(workspace, name)
    assert max(abs(ref[s] - got[s]) for s in ref) < 1e-6, (ref, got)
    runs = mlflow_runs(text)
    assert len(runs) == 2 and runs[0] == runs[1] != "None", runs


def test_same_job_trains_across_two_nodes(slurm, workspace, straight):
    name = "two-node"
    job = submit(slurm, workspace, name, f"train.max_steps={STEPS}",
                 sbatch_args=["-p", "pair", "--nodes=2", "--ntasks-per-node=1"])
    info = finished(slurm, workspace, name, job)
    assert info["NodeList"] == "n[1-2]"
    text = output(workspace, name)
    assert "on n1 (node 0/2), master n1:" in text and "on n2 (node 1/2), master n1:" in text
    # Same data, same math over gloo TCP between two hosts as over loopback on one.
    ref, got = losses(workspace, "straight"), losses(workspace, name)
    assert sorted(got) == sorted(ref)
    assert max(abs(ref[s] - got[s]) for s in ref) < 1e-4, (ref, got)


def test_node_cut_off_fails_within_timeout_and_resubmission_resumes(slurm, workspace):
    name, timeout_s = "fault", 15
    pair = ["-p", "pair", "--nodes=2", "--ntasks-per-node=1"]
    job = submit(slurm, workspace, name, "train.max_steps=1000", "checkpoint.every_steps=3",
                 sbatch_args=pair, env={"DELIA_DIST_TIMEOUT": str(timeout_s)})
    wait_for_step(slurm, workspace, name, job, 5)
    slurm.cut_node("n2")
    t0 = time.monotonic()
    try:
        info = slurm.wait_job(job, {"FAILED", "NODE_FAIL", "PENDING", "CANCELLED", "COMPLETED"},
                              timeout_s + 60)
        elapsed = time.monotonic() - t0
    finally:
        slurm.restore_node("n2")
    text = output(workspace, name)
    assert info["JobState"] != "COMPLETED", text[-3000:]
    assert elapsed < timeout_s + 60
    print(f"node cut off: job {info['JobState']} after {elapsed:.1f}s (collective timeout {timeout_s}s)")
    # The surviving rank says what happened instead of hanging until the time limit.
    assert re.search(r"\[rank 0\] training failed: \w+: .*timed out", text, re.I), text[-5000:]
    latest = (workspace / "runs" / name / "checkpoints" / "latest").read_text().strip()
    last_step = int(latest.removeprefix("step_"))
    assert last_step >= 3 and (workspace / "runs" / name / "checkpoints" / latest).is_dir()
    if info["JobState"] == "PENDING":  # Slurm requeued it for the node failure; take over by hand
        slurm.scancel(job)

    job2 = submit(slurm, workspace, name, f"train.max_steps={last_step + 2}", "checkpoint.every_steps=3",
                  sbatch_args=pair)
    finished(slurm, workspace, name, job2)
    text = output(workspace, name)
    assert f"resumed from runs/{name}/checkpoints/{latest}" in text
    assert f"training completed at step {last_step + 2}" in text


def test_rank_killed_mid_step_ends_the_two_node_job_with_its_cause(slurm, workspace):
    """Rank 1 dies (SIGKILL, as the OOM killer does) while rank 0 is stuck (SIGSTOP: on GPUs a
    rank in an NCCL collective does not notice a dead peer before the collective timeout).
    Before the fix (srun --kill-on-bad-exit=0) srun waited for rank 0 and the job ran on to
    its time limit; now srun ends the step at once and the log names the failed task."""
    name = "killed"
    job = submit(slurm, workspace, name, "train.max_steps=1000",
                 sbatch_args=["-p", "pair", "--nodes=2", "--ntasks-per-node=1"], env={"DELIA_DIST_TIMEOUT": "600"})
    wait_for_step(slurm, workspace, name, job, 3)
    stuck, dying = slurm.task_pids(job, procid=0), slurm.task_pids(job, procid=1)
    assert stuck and dying
    try:
        for pid in stuck:
            os.kill(pid, signal.SIGSTOP)
        for pid in dying:
            os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        info = slurm.wait_job(job, {"FAILED", "CANCELLED", "COMPLETED", "NODE_FAIL"}, 120)
        elapsed = time.monotonic() - t0
    finally:
        if slurm.job(job).get("JobState") in ("RUNNING", "PENDING"):
            slurm.scancel(job)
        for pid in stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    print(f"rank killed: job {info['JobState']} after {elapsed:.1f}s (collective timeout 600 s)")
    text = output(workspace, name)
    assert info["JobState"] == "FAILED", text[-3000:]
    assert re.search(r"srun: error: n2: task 1: Killed", text), text[-3000:]
    assert "[delia] training failed (srun exit" in text


def test_two_node_job_preempted_resumes_on_one_node(slurm, workspace):
    """Elastic resume: a 2-node job is preempted; the user resubmits it with --nodes=1 (the
    partition is busy) and it continues from its checkpoint on one rank to the end."""
    name, steps = "shrink", 10
    job = submit(slurm, workspace, name, f"train.max_steps={steps}",
                 sbatch_args=["-p", "pair", "--nodes=2", "--ntasks-per-node=1"])
    wait_for_step(slurm, workspace, name, job, 3)
    slurm.scancel("--signal=USR1", "--batch", job)
    slurm._wait(lambda: slurm.job(job).get("JobState") == "PENDING" and slurm.job(job).get("Restarts") == "1",
                120, f"job {job} to requeue", detail=lambda: output(workspace, name)[-4000:])
    slurm.scancel(job)  # the requeued 2-node job would wait for both nodes; take over by hand
    stopped_at = int((workspace / "runs" / name / "checkpoints" / "latest").read_text().strip()
                     .removeprefix("step_"))
    assert 3 <= stopped_at < steps
    slurm._wait(lambda: {"n1", "n2"} <= slurm.idle_nodes(), 60, "pair nodes idle after cancel")

    job2 = submit(slurm, workspace, name, f"train.max_steps={steps}",
                  sbatch_args=["-p", "pair", "--nodes=1", "--ntasks=1", "--ntasks-per-node=1"])
    info = finished(slurm, workspace, name, job2)
    text = output(workspace, name)
    assert f"resumed from runs/{name}/checkpoints/step_{stopped_at}" in text
    assert f"checkpoint step_{stopped_at} was written by 2 ranks; resuming on 1" in text
    assert "rank 0/1" in text and f"training completed at step {steps}" in text
    assert info["NodeList"] in ("n1", "n2")
    steps_seen = [r["step"] for r in metrics(workspace, name)]
    assert steps_seen == list(range(0, steps + 1)), steps_seen  # every step once, none repeated
    got = losses(workspace, name)
    # The loss carries on from where the 2-node job stopped instead of starting over.
    assert got[stopped_at + 1] < got[1] - 0.3, got
    assert abs(got[stopped_at + 1] - got[stopped_at]) < 1.0, got
    runs = mlflow_runs(text)
    assert len(runs) == 2 and runs[0] == runs[1] != "None", runs


def test_eval_job_exports_the_checkpoint_and_scores_it(slurm, workspace, straight):
    """slurm/delia_eval.sh: `delia ckpt export` of a ZeRO-3 checkpoint, then `delia eval` on it,
    scores logged to the training run."""
    name, ckpt = "eval", f"runs/straight/checkpoints/step_{STEPS}"
    # The script asks for one GPU per task; this CPU cluster has none to give.
    job = slurm.sbatch("-o", str(workspace / f"{name}.out"), "--export=ALL", "--gpus-per-task=0",
                       "--cpus-per-task=1", str(REPO / "slurm" / "delia_eval.sh"), cwd=workspace,
                       env={"DELIA_ROOT": str(REPO), "DELIA_CONFIG": str(REPO / "configs" / "tiny_cpu.yaml"),
                            "DELIA_CHECKPOINTS": ckpt, "DELIA_OVERRIDES": "run_dir=runs/straight"})
    finished(slurm, workspace, name, job)
    assert (workspace / f"{ckpt}-hf" / "config.json").is_file()
    text = output(workspace, name)
    scores = dict(re.findall(r"^(\S+)\s+(-?\d+\.\d{4})$", text, re.M))
    assert {"eval/translation/chrf", "eval/translation/bleu", "eval/format/well_formed"} <= set(scores), text
    # sacrebleu's chrF is 0-100. After 24 steps the toy model may answer with its most
    # frequent loss token, <|end|>, first (an empty answer scores 0), so no lower bound.
    assert 0 <= float(scores["eval/translation/chrf"]) <= 100


def test_experiment_slurm_backend_runs_on_the_real_cluster(slurm, workspace):
    """`delia experiment` with experiment.backend=slurm: each run is `sbatch --wait` of
    slurm/delia_tiny.sh on this cluster (not a stand-in sbatch), then export and eval here."""
    import subprocess
    import sys
    env = {**slurm.env, "OMP_NUM_THREADS": "1", "DELIA_DIST_TIMEOUT": "60"}
    proc = subprocess.run([sys.executable, "-m", "delia_dist.cli", "experiment", str(REPO / "configs/tiny_cpu.yaml"),
                           "--only", "baseline", "--set", "experiment.backend=slurm",
                           "--set", "train.max_steps=6", "--set", "eval.max_new_tokens=8"],
                          cwd=workspace, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT + 300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((workspace / "runs/tiny/experiment_results.json").read_text())  # the config's run_dir
    assert [r["status"] for r in results] == ["ok"], results
    assert results[0]["steps"] == 6 and 0 <= results[0]["eval/translation/chrf"] <= 100
    log = (workspace / "runs/tiny/baseline/train.log").read_text()
    assert "$ sbatch --parsable --wait --job-name=delia-baseline" in log
    assert "[rank 0] slurm: rank 0/2" in log and "training completed at step 6" in log
