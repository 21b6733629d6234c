"""The one place in delia_dist that talks to torch.distributed.

Data and model code take rank and world size as plain arguments; the trainer asks this
module to set up the process group, agree on flags across ranks and tear down.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init(env, timeout_s: float = 600.0) -> str:
    """Start the process group for `env` (a launcher.env.DistEnv); returns the device string.

    The timeout bounds every collective: a rank whose peer died fails with an error
    after timeout_s instead of hanging until Slurm's time limit.
    """
    os.environ.update(env.torch_env())
    if torch.cuda.is_available():
        # device_index: 0 when Slurm binds one GPU per task, else the local rank.
        torch.cuda.set_device(env.device_index)
        device, backend = f"cuda:{env.device_index}", "nccl"
    else:
        device, backend = "cpu", "gloo"
    if not dist.is_initialized():
        import deepspeed
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                   timeout=datetime.timedelta(seconds=timeout_s),
                                   init_method="env://", rank=env.rank, world_size=env.world_size)
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any rank (e.g. a preemption signal)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_ranks(flag: bool) -> bool:
    """True on every rank only if it is True on every rank (e.g. 'I still have data')."""
    return not any_rank(not flag)


def max_over_ranks(value: float) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a small CPU tensor over ranks (metrics); returns a new tensor."""
    out = t.detach().clone().to(torch.float64)
    if dist.is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def teardown() -> None:
    """Destroy the process group; the launcher then exits with os._exit, because gloo's
    background threads otherwise crash the interpreter at exit now and then."""
    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
