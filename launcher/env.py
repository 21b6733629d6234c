"""The distributed environment as one small value.

Slurm, torchrun and a plain `python` each describe a process's place in the job with
different variables; everything downstream reads DistEnv instead, so nothing else in
the code base ever reads SLURM_*.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Mapping, Optional

DEFAULT_PORT = 29500


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
    return _expand_first(nodelist)


def _expand_first(nodelist: str) -> str:
    """Fallback parser for the first host when scontrol is unavailable."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist
    if "[" not in head:
        return head
    prefix, rest = head.split("[", 1)
    first = rest.split("]")[0].split(",")[0].split("-")[0]
    return prefix + first


def _int(env: Mapping[str, str], key: str, default: Optional[int] = None) -> Optional[int]:
    value = env.get(key)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {key}={value!r} is not an integer") from None


def _slurm_port(job_id: Optional[str], env: Mapping[str, str]) -> int:
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    # Distinct jobs sharing a node must not collide; derive the port from the job id.
    return 20000 + int(job_id) % 20000 if job_id and job_id.isdigit() else DEFAULT_PORT


def detect_env(env: Mapping[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables: torchrun first (it may itself run inside a Slurm job),
    then Slurm's srun task variables, else a single process."""
    env = os.environ if env is None else env
    job_id = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    restarts = _int(env, "SLURM_RESTART_COUNT", 0) or 0
    array = dict(array_task_id=_int(env, "SLURM_ARRAY_TASK_ID"),
                 array_task_count=_int(env, "SLURM_ARRAY_TASK_COUNT"))
    if "RANK" in env and "WORLD_SIZE" in env and ("TORCHELASTIC_RUN_ID" in env or "LOCAL_WORLD_SIZE" in env):
        world = _int(env, "WORLD_SIZE", 1)
        local_world = _int(env, "LOCAL_WORLD_SIZE", 1)
        rank = _int(env, "RANK", 0)
        return DistEnv(rank=rank, local_rank=_int(env, "LOCAL_RANK", 0), world_size=world,
                       local_world_size=local_world, num_nodes=max(1, world // max(local_world, 1)),
                       node_rank=_int(env, "GROUP_RANK", rank // max(local_world, 1)),
                       master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                       master_port=_int(env, "MASTER_PORT", DEFAULT_PORT), launcher="torchrun",
                       job_id=job_id, restart_count=restarts, **array)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        addr = env.get("MASTER_ADDR") or first_host(nodelist)
        ntasks = _int(env, "SLURM_NTASKS", 1)
        nnodes = _int(env, "SLURM_JOB_NUM_NODES", _int(env, "SLURM_NNODES", 1))
        local_world = _int(env, "SLURM_NTASKS_PER_NODE", None) or max(1, ntasks // max(nnodes, 1))
        return DistEnv(rank=_int(env, "SLURM_PROCID"), local_rank=_int(env, "SLURM_LOCALID", 0),
                       world_size=ntasks, local_world_size=local_world, num_nodes=nnodes,
                       node_rank=_int(env, "SLURM_NODEID", 0), master_addr=addr,
                       master_port=_slurm_port(job_id, env), launcher="slurm", job_id=job_id,
                       restart_count=restarts, **array)
    return DistEnv(job_id=job_id, restart_count=restarts, **array)
