"""Where a training step's time goes: data wait, forward, loss, backward, optimizer step,
collectives and logging, per step, plus the threads the run started.

Cheap enough to leave on: one perf_counter pair per phase on the host. On a GPU the device
phases (forward, loss, backward, optimizer) are timed with CUDA events instead, recorded on
the stream and read only in summary(), so profiling adds no host sync to a step.

Phases nest and each counts its own time only: a ZeRO-3 all-gather inside the forward is
charged to "collectives", not "forward". Collectives are seen by wrapping the deepspeed.comm
and torch.distributed functions while the profile is installed (only then); on a GPU that
is the host time to issue them, their transfer overlaps the device phases.
"""
from __future__ import annotations

import contextlib
import functools
import os
import statistics
import threading
import time

PHASES = ("data", "collectives", "forward", "loss", "backward", "optimizer", "logging")
DEVICE_PHASES = {"forward", "loss", "backward", "optimizer"}
# deepspeed.comm entry points ZeRO-1/2/3 use for gathers, reductions and broadcasts, and
# torch.distributed's (accelerate's gathers, delia's host reductions).
COMM_FUNCTIONS = ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "all_gather", "broadcast",
                  "reduce_scatter_fn", "allgather_fn", "all_to_all_single", "inference_all_reduce",
                  "all_gather_object", "broadcast_object_list", "barrier")


def os_threads() -> int:
    """Threads of this process as the kernel counts them (Python's, torch's, gloo's, ...)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class _Null:
    """The profile when profiling is off: every phase is the same empty context."""
    enabled = False
    _ctx = contextlib.nullcontext()

    def phase(self, name: str):
        return self._ctx

    def end_step(self) -> None:
        pass


NULL = _Null()


class StepProfile:
    enabled = True

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.steps: list[dict[str, float]] = []  # host seconds per phase, one dict per step
        self.step_ends: list[float] = []  # perf_counter at each step's end: wall time per step
        self._events: list[list[tuple[str, object, object]]] = []  # per step: (phase, start, end)
        self._current: dict[str, float] = {}
        self._current_events: list = []
        self._folded = 0  # steps before this one hold no unread events
        self._stack: list[list] = []  # [name, start, time spent in nested phases]
        self.threads_at_start = os_threads()
        self.python_threads_at_start = {t.name for t in threading.enumerate()}
        self._saved_comm: list[tuple[object, str, object]] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.cuda and name in DEVICE_PHASES:
            import torch
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            parent = self._stack[-1][0] if self._stack else None
            self._stack.append([name, 0.0, 0.0])
            start.record()
            try:
                yield
            finally:
                end.record()
                self._stack.pop()
                self._current_events.append((name, parent, start, end))
            return
        frame = [name, time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            spent = time.perf_counter() - frame[1]
            self._current[name] = self._current.get(name, 0.0) + spent - frame[2]
            if self._stack and not (self.cuda and self._stack[-1][0] in DEVICE_PHASES):
                self._stack[-1][2] += spent

    def end_step(self) -> None:
        self.step_ends.append(time.perf_counter())
        self.steps.append(self._current)
        self._events.append(self._current_events)
        self._current, self._current_events = {}, []
        # A long GPU run must not hold every step's events: fold those the device has
        # finished (query() never waits) into their step's seconds.
        for i in range(self._folded, len(self._events) - 1):
            events = self._events[i]
            if events and not events[-1][3].query():
                break
            self._fold(i)
            self._folded = i + 1

    def _fold(self, i: int) -> None:
        row = self.steps[i]
        for name, parent, start, end in self._events[i]:
            end.synchronize()  # at once for a finished event; waits only when called from summary()
            spent = start.elapsed_time(end) / 1000.0
            row[name] = row.get(name, 0.0) + spent
            if parent in DEVICE_PHASES:  # nested device phases: each counts its own time
                row[parent] = row.get(parent, 0.0) - spent
        self._events[i] = []

    def install_comm_timers(self) -> None:
        """Charge DeepSpeed's and torch.distributed's collectives to the 'collectives' phase
        until uninstall()."""
        import deepspeed.comm as ds_comm
        import deepspeed.comm.comm as ds_comm_impl
        import torch.distributed as torch_dist

        for module in (ds_comm, ds_comm_impl, torch_dist):
            for fn_name in COMM_FUNCTIONS:
                fn = getattr(module, fn_name, None)
                if fn is None:
                    continue
                self._saved_comm.append((module, fn_name, fn))
                setattr(module, fn_name, self._timed(fn))

    def uninstall(self) -> None:
        for module, fn_name, fn in reversed(self._saved_comm):
            setattr(module, fn_name, fn)
        self._saved_comm.clear()

    def _timed(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if self._stack and self._stack[-1][0] == "collectives":
                return fn(*args, **kwargs)  # allgather_fn calling all_gather_into_tensor: once
            with self.phase("collectives"):
                return fn(*args, **kwargs)
        return wrapper

    def per_step(self, skip: int = 0) -> list[dict[str, float]]:
        """Seconds per phase of each step after the first `skip` (CUDA events read here)."""
        for i in range(self._folded, len(self._events)):
            self._fold(i)
        self._folded = len(self._events)
        return [dict(row) for row in self.steps[skip:]]

    def summary(self, skip: int = 0) -> dict:
        """Median seconds per phase over the steps after `skip`, their share of the summed
        phases, and the threads: OS count then and now, Python threads started since and alive."""
        rows = self.per_step(skip)
        names = [p for p in PHASES if any(p in r for r in rows)] + sorted({k for r in rows for k in r} - set(PHASES))
        median = {p: statistics.median(r.get(p, 0.0) for r in rows) if rows else 0.0 for p in names}
        total = sum(median.values()) or 1.0
        new_threads = sorted({t.name for t in threading.enumerate()} - self.python_threads_at_start)
        alive = sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())
        return {"steps": len(rows), "median_s": median, "share": {p: v / total for p, v in median.items()},
                "threads": {"os_at_start": self.threads_at_start, "os_now": os_threads(),
                            "python_started": new_threads, "python_alive": alive}}


def format_summary(summary: dict) -> str:
    """One line per phase: median ms and share of the step."""
    lines = [f"phase profile over {summary['steps']} steps (median per step):"]
    for p, v in summary["median_s"].items():
        lines.append(f"  {p:<12} {v * 1000:9.2f} ms  {summary['share'][p] * 100:5.1f}%")
    th = summary["threads"]
    lines.append(f"  threads: {th['os_at_start']} at the first step, {th['os_now']} now; Python threads besides the "
                 f"main one: {', '.join(th['python_alive']) or 'none'}")
    return "\n".join(lines)


def start(enabled: bool, device: str, loss_module) -> StepProfile | _Null:
    """The run's profile (NULL when off), wired into the loss module and DeepSpeed's comm."""
    if not enabled:
        return NULL
    profile = StepProfile(cuda=device.startswith("cuda"))
    loss_module.profile = profile
    profile.install_comm_timers()
    return profile


def finish(profile, run_dir, write: bool) -> dict | None:
    """Unwire the profile; on the writing rank save <run_dir>/profile.json (first step, the
    warm-up, left out when there are more) and log the table."""
    if not profile.enabled:
        return None
    import json
    import logging
    from pathlib import Path
    profile.uninstall()
    summary = profile.summary(skip=1 if len(profile.steps) > 1 else 0)
    if write:
        Path(run_dir, "profile.json").write_text(json.dumps(summary, indent=1))
        logging.getLogger("delia.train").info("%s", format_summary(summary))
    return summary
