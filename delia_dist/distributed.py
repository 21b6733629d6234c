"""The one place in delia_dist that talks to torch.distributed.

Data and model code take rank and world size as plain arguments; the trainer asks this
module to set up the process group, agree on flags across ranks and tear down.

Two kinds of collective, each on the group that suits its data:
- host values (flags, token counts, RSS, object broadcasts) go over a gloo group on CPU
  tensors. Under NCCL that is a side group made once at init: NCCL rejects CPU tensors, and
  moving a host flag to the GPU would make every step wait for the GPU queue to drain
  before the flag could be read back. The cost is one more TCP mesh (63 peers per rank at
  64 ranks, built once) and ~1 ms per small all-reduce, off the GPU's critical path.
  Under gloo (CPU runs) the default group serves both.
- device tensors (the per-step loss sums kept on the GPU) go over the default group on
  the training device, and only at log steps.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

DEFAULT_RENDEZVOUS_TIMEOUT_S = 1800.0

_host_group = None  # gloo group for host values; None means the default group
_device: torch.device | None = None  # the device the default group's collectives use
_timeout_s: float | None = None  # the collective timeout given to init
_io_timeout_s: float = 0.0  # what collectives may wait inside a checkpoint save or load


def init(env, timeout_s: float = 600.0, rendezvous_timeout_s: float | None = None,
         backend: str | None = None) -> str:
    """Start the process group for `env` (a launcher.env.DistEnv); returns the device string.

    Two timeouts: `rendezvous_timeout_s` bounds how long ranks wait for each other to show
    up (64 ranks importing torch from a shared filesystem start minutes apart), and
    `timeout_s` bounds every collective afterwards, so a rank whose peer died fails after
    timeout_s instead of hanging until Slurm's time limit. rendezvous_timeout_s defaults to
    $DELIA_RENDEZVOUS_TIMEOUT, else 30 minutes. `backend` overrides the choice
    (nccl on GPUs, gloo on CPU), e.g. for tests that need a group rejecting CPU tensors.
    """
    global _host_group, _device, _timeout_s
    os.environ.update(env.torch_env())
    if torch.cuda.is_available():
        # device_index: 0 when Slurm binds one GPU per task, else the local rank.
        torch.cuda.set_device(env.device_index)
        device, default_backend = f"cuda:{env.device_index}", "nccl"
    else:
        device, default_backend = "cpu", "gloo"
    backend = backend or default_backend
    if rendezvous_timeout_s is None:
        rendezvous_timeout_s = float(os.environ.get("DELIA_RENDEZVOUS_TIMEOUT", DEFAULT_RENDEZVOUS_TIMEOUT_S))
    if not dist.is_initialized():
        # Slow start-up work before the rendezvous, whose wait absorbs the skew: importing
        # DeepSpeed, and on CPU the shared-memory op its init_distributed JIT-builds (cached
        # per process; None at once on GPUs).
        import deepspeed
        from deepspeed.comm.torch import build_shm_op
        build_shm_op()
        store = _rendezvous_store(env, rendezvous_timeout_s)
        # device_id (NCCL): the communicator is built now, inside the rendezvous, not at the
        # first collective under the collective timeout.
        extra = {"device_id": torch.device(device)} if backend == "nccl" else {}
        dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s), **extra)
        # DeepSpeed adopts the group above instead of starting its own.
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                   timeout=datetime.timedelta(seconds=timeout_s))
    _device, _timeout_s = torch.device(device), timeout_s
    _host_group = None if dist.get_backend() == "gloo" else dist.new_group(
        backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return device


def _rendezvous_store(env, timeout_s: float) -> dist.TCPStore:
    """The TCPStore every rank meets at. Rank 0 hosts it and waits up to timeout_s for all
    ranks to connect; under torchrun its agent already hosts one, so every rank is a client."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    return dist.TCPStore(env.master_addr, env.master_port, env.world_size,
                         is_master=env.rank == 0 and not agent,
                         timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=not agent)


@contextlib.contextmanager
def longer_timeout(seconds: float) -> Iterator[None]:
    """Collectives on every group wait up to `seconds` (never less than init's timeout) inside
    the block: a checkpoint save or a model load keeps ranks in one barrier for as long as the
    filesystem takes, which at 70B is minutes. Local: each rank enters it at the same point
    of the program, so no collective is needed to agree on it."""
    if not dist.is_initialized() or _timeout_s is None or seconds <= _timeout_s:
        yield
        return
    from torch.distributed.distributed_c10d import _set_pg_timeout
    groups = [None] + ([_host_group] if _host_group is not None else [])
    for g in groups:
        _set_pg_timeout(datetime.timedelta(seconds=seconds), g)
    try:
        yield
    finally:
        for g in groups:
            _set_pg_timeout(datetime.timedelta(seconds=_timeout_s), g)


def set_io_timeout(seconds: float) -> None:
    """The bound under_io_timeout applies, from the plan's bytes / filesystem bandwidth."""
    global _io_timeout_s
    _io_timeout_s = seconds


def under_io_timeout(fn):
    """Decorator for checkpoint save and load entry points: run under set_io_timeout's bound."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with longer_timeout(_io_timeout_s):
            return fn(*args, **kwargs)
    return wrapper


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def device() -> torch.device:
    """The device of the default group's collectives (the training device)."""
    return _device if _device is not None else torch.device("cpu")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier(group=_host_group)


def sum_host(values: Sequence[float]) -> list[float]:
    """Sum numbers known on the host over ranks (float64: exact for counts below 2**53)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=_host_group)
    return t.tolist()


def max_over_ranks(value: float) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_host_group)
    return float(t.item())


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any rank (e.g. a preemption signal)."""
    return max_over_ranks(1.0 if flag else 0.0) > 0


def all_ranks(flag: bool) -> bool:
    """True on every rank only if it is True on every rank (e.g. 'I still have data')."""
    return not any_rank(not flag)


def sum_device(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place on the training device; returns it. A tensor on
    another device is a programming error (NCCL would reject it on a GPU only)."""
    if t.device != device():
        raise ValueError(f"sum_device needs a tensor on {device()}, got one on {t.device}")
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_host_group)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's `obj` (picklable, small), in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_host_group)
    return out


def teardown() -> None:
    """Destroy the process group; the launcher then exits with os._exit, because gloo's
    background threads otherwise crash the interpreter at exit now and then."""
    global _host_group, _device, _timeout_s
    if dist.is_initialized():
        try:
            dist.barrier(group=_host_group)
        finally:
            dist.destroy_process_group()
            _host_group, _device, _timeout_s = None, None, None
