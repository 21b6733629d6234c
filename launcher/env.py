"""The distributed environment as one small value.

Slurm, torchrun and a plain `python` each describe a process's place in the job with
different variables; everything downstream reads DistEnv instead, so nothing else in
the code base ever reads SLURM_*.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from typing import Mapping, Optional

DEFAULT_PORT = 29500


class EnvError(ValueError):
    """The launcher's variables contradict each other (e.g. rank >= world size)."""


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    num_nodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    launcher: str = "single"  # slurm | torchrun | single
    job_id: Optional[str] = None
    restart_count: int = 0
    array_task_id: Optional[int] = None
    array_task_count: Optional[int] = None
    # Which of the accelerators this process sees is its own: local_rank when every task
    # sees the whole node, 0 when Slurm binds one GPU per task (CUDA_VISIBLE_DEVICES=<one>).
    device_index: int = 0

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise EnvError(f"rank {self.rank} is outside world size {self.world_size}")
        if not 0 <= self.local_rank < max(self.local_world_size, 1):
            raise EnvError(f"local rank {self.local_rank} is outside local world size {self.local_world_size}")
        if not 0 <= self.node_rank < max(self.num_nodes, 1):
            raise EnvError(f"node rank {self.node_rank} is outside node count {self.num_nodes}")
        if not 0 < self.master_port < 65536:
            raise EnvError(f"master port {self.master_port} is not a TCP port")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def torch_env(self) -> dict[str, str]:
        """The variables torch.distributed's env:// init reads."""
        return {"RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank),
                "WORLD_SIZE": str(self.world_size), "LOCAL_WORLD_SIZE": str(self.local_world_size),
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port)}


def first_host(nodelist: str) -> str:
    """First hostname of a Slurm nodelist ("n[1-2],m3" -> "n1"), via scontrol as Slurm intends."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return expand_first(nodelist)


def expand_first(nodelist: str) -> str:
    """The first host of a nodelist without scontrol (login nodes and tests lack it):
    "gpu[007-009,012],cpu1" -> "gpu007" (leading zeros are part of the name)."""
    m = re.match(r"\s*([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m or not m.group(1):
        raise EnvError(f"cannot read a host from nodelist {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """Tasks on node `node_id` from Slurm's compressed form: "4(x2),3" means 4,4,3."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise EnvError(f"cannot read tasks per node from {tasks_per_node!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    if not 0 <= node_id < len(counts):
        raise EnvError(f"node {node_id} is not in tasks per node {tasks_per_node!r}")
    return counts[node_id]


def _int(env: Mapping[str, str], key: str, default: Optional[int] = None) -> Optional[int]:
    value = env.get(key)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise EnvError(f"environment variable {key}={value!r} is not an integer") from None


def _slurm_port(job_id: Optional[str], env: Mapping[str, str]) -> int:
    if env.get("MASTER_PORT"):
        return _int(env, "MASTER_PORT")
    # Distinct jobs sharing a node must not collide; derive the port from the job id.
    return 20000 + int(job_id) % 20000 if job_id and job_id.isdigit() else DEFAULT_PORT


def _device_index(env: Mapping[str, str], local_rank: int) -> int:
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return 0 if len(visible) == 1 else local_rank


def detect_env(env: Mapping[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables: torchrun first (it may itself run inside a Slurm job),
    then Slurm's srun task variables, else a single process.

    A batch script's own shell has SLURM_JOB_ID but no SLURM_PROCID; only srun tasks count
    as Slurm ranks, so `python -m launcher` run directly in a batch script is one process.
    """
    env = os.environ if env is None else env
    job_id = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    restarts = _int(env, "SLURM_RESTART_COUNT", 0) or 0
    common = dict(job_id=job_id, restart_count=restarts, array_task_id=_int(env, "SLURM_ARRAY_TASK_ID"),
                  array_task_count=_int(env, "SLURM_ARRAY_TASK_COUNT"))
    if "RANK" in env and "WORLD_SIZE" in env and ("TORCHELASTIC_RUN_ID" in env or "LOCAL_WORLD_SIZE" in env):
        world = _int(env, "WORLD_SIZE")
        local_world = _int(env, "LOCAL_WORLD_SIZE", 1)
        rank, local_rank = _int(env, "RANK"), _int(env, "LOCAL_RANK", 0)
        return DistEnv(rank=rank, local_rank=local_rank, world_size=world, local_world_size=local_world,
                       num_nodes=max(1, -(-world // max(local_world, 1))),
                       node_rank=_int(env, "GROUP_RANK", rank // max(local_world, 1)),
                       master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                       master_port=_int(env, "MASTER_PORT", DEFAULT_PORT), launcher="torchrun",
                       device_index=_device_index(env, local_rank), **common)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        addr = env.get("MASTER_ADDR") or (first_host(nodelist) if nodelist else "127.0.0.1")
        ntasks = _int(env, "SLURM_NTASKS")
        nnodes = _int(env, "SLURM_STEP_NUM_NODES", _int(env, "SLURM_JOB_NUM_NODES", _int(env, "SLURM_NNODES", 1)))
        node_id = _int(env, "SLURM_NODEID", 0)
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        local_world = tasks_on_node(per_node, node_id) if per_node else max(1, ntasks // max(nnodes, 1))
        local_rank = _int(env, "SLURM_LOCALID", 0)
        return DistEnv(rank=_int(env, "SLURM_PROCID"), local_rank=local_rank, world_size=ntasks,
                       local_world_size=local_world, num_nodes=nnodes, node_rank=node_id, master_addr=addr,
                       master_port=_slurm_port(job_id, env), launcher="slurm",
                       device_index=_device_index(env, local_rank), **common)
    return DistEnv(**common)
