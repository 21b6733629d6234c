"""DistEnv from Slurm, torchrun and a single process: the one place SLURM_* is read."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from launcher.env import DistEnv, EnvError, detect_env, expand_first, tasks_on_node

REPO = Path(__file__).resolve().parents[2]
SLURM_TASK = {"SLURM_JOB_ID": "1234", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4",
              "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
              "SLURM_JOB_NODELIST": "gpu[007-008]", "SLURM_RESTART_COUNT": "2"}


def test_slurm_task_becomes_rank_world_and_first_host_as_master():
    env = detect_env(SLURM_TASK)
    assert env == DistEnv(rank=3, local_rank=1, world_size=4, local_world_size=2, num_nodes=2, node_rank=1,
                          master_addr="gpu007", master_port=20000 + 1234, launcher="slurm", job_id="1234",
                          restart_count=2, device_index=1)
    assert env.torch_env() == {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
                               "MASTER_ADDR": "gpu007", "MASTER_PORT": "21234"}
    assert not env.is_main


def test_slurm_uneven_tasks_per_node_and_explicit_master():
    env = detect_env({**SLURM_TASK, "SLURM_PROCID": "3", "SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "3,1",
                      "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "31000"})
    assert (env.local_world_size, env.master_addr, env.master_port) == (1, "10.0.0.5", 31000)


def test_one_gpu_bound_per_task_uses_device_zero():
    env = detect_env({**SLURM_TASK, "CUDA_VISIBLE_DEVICES": "5"})
    assert env.local_rank == 1 and env.device_index == 0
    assert detect_env({**SLURM_TASK, "CUDA_VISIBLE_DEVICES": "0,1,2,3"}).device_index == 1


def test_torchrun_wins_inside_a_slurm_job():
    env = detect_env({**SLURM_TASK, "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                      "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555", "TORCHELASTIC_RUN_ID": "x"})
    assert (env.launcher, env.rank, env.world_size, env.num_nodes, env.master_port) == ("torchrun", 1, 2, 1, 29555)
    assert env.job_id == "1234"  # still known for tagging the run


def test_batch_shell_and_plain_python_are_one_process():
    for environ in ({}, {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "n1"}):
        env = detect_env(environ)
        assert (env.launcher, env.rank, env.world_size, env.is_main) == ("single", 0, 1, True)


def test_array_task_is_recorded():
    env = detect_env({"SLURM_ARRAY_JOB_ID": "50", "SLURM_JOB_ID": "53", "SLURM_ARRAY_TASK_ID": "3",
                      "SLURM_ARRAY_TASK_COUNT": "4"})
    assert (env.job_id, env.array_task_id, env.array_task_count) == ("50", 3, 4)


@pytest.mark.parametrize("bad, message", [
    ({"SLURM_PROCID": "x"}, "SLURM_PROCID='x' is not an integer"),
    ({"SLURM_PROCID": "4"}, "rank 4 is outside world size 4"),
    ({"SLURM_STEP_TASKS_PER_NODE": "2(x1)"}, "node 1 is not in tasks per node"),
    ({"SLURM_STEP_TASKS_PER_NODE": "two"}, "cannot read tasks per node"),
    ({"MASTER_PORT": "70000"}, "not a TCP port"),
])
def test_contradictory_variables_are_named(bad, message):
    with pytest.raises(EnvError, match=re.escape(message)):
        detect_env({**SLURM_TASK, **bad})


@pytest.mark.parametrize("nodelist, first", [
    ("n1", "n1"), ("gpu[007-009,012],cpu1", "gpu007"), ("a1,b[1-2]", "a1"), ("b[3,1]", "b3"),
    ("node-a[10-11]", "node-a10"),
])
def test_first_host_of_a_nodelist(nodelist, first):
    assert expand_first(nodelist) == first


def test_tasks_per_node_compressed_form():
    assert [tasks_on_node("4(x2),3", i) for i in range(3)] == [4, 4, 3]


def test_nothing_else_reads_slurm_variables():
    """Slurm's variables are the launcher's business; code elsewhere takes a DistEnv."""
    offenders = []
    for top in ("delia_dist", "kernels", "bench"):
        for path in (REPO / top).rglob("*.py"):
            if re.search(r"SLURM_[A-Z]", path.read_text()):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
