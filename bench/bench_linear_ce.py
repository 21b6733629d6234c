"""Fused linear + cross-entropy benchmark: time and peak extra memory of forward+backward,
ours beside the naive `logits = h @ W.T; cross_entropy(logits.float(), y)`, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_linear_ce.py                  # CPU, chunked
    python bench/bench_linear_ce.py --device cuda --n 8192 --d 4096 8192 --v 128256 --dtype bf16 \
        --compare liger,cce

Peak extra memory = the most bytes alive at once among the tensors created by forward and
backward (inputs excluded; gradients of hidden and weight included, both methods make them).
CUDA: torch.cuda.max_memory_allocated() minus the allocation before the step. CPU, where
torch keeps no allocator statistics: kernels.memtrack.TensorMemoryTracker, which sums live
tensor storages through a TorchDispatchMode (exact for tensors; BLAS scratch not counted),
in a separate untimed pass. On CUDA, `--compare liger,cce` adds Liger-Kernel's
LigerFusedLinearCrossEntropyLoss and Apple's cut-cross-entropy `linear_cross_entropy`
(each only if installed).

FLOPs: logits (2*N*D*V), grad of hidden (2*N*D*V) and grad of weight (2*N*D*V) = 6*N*D*V
for every method here; ours computes the logits once (gradients made in the forward). The
"floor" row times three h @ W.T products on the same inputs: that work at this machine's
matmul rate, which no method can beat. `--grad-accum fp32 input` adds a row per mode.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/machine.py, also when loaded by path
from machine import cpu_model  # noqa: E402

from kernels import linear_cross_entropy  # noqa: E402
from kernels.memtrack import TensorMemoryTracker  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def naive(h, w, y):
    return torch.nn.functional.cross_entropy((h @ w.T).float(), y)


def ours(chunk_size: Optional[int], grad_accum: str = "fp32"):
    return lambda h, w, y: linear_cross_entropy(h, w, y, chunk_size=chunk_size, grad_accum=grad_accum)


BASELINES = {"liger": "liger-kernel", "cce": "cut-cross-entropy"}  # --compare name: PyPI name


def baselines(names: list[str]) -> dict[str, Callable]:
    """Other fused losses by --compare name, each imported only if installed (this script
    never installs anything); a missing one is reported and left out of the table."""
    found = {}
    for name in names:
        try:
            if name == "liger":
                from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
                liger = LigerFusedLinearCrossEntropyLoss()
                found["liger"] = lambda h, w, y: liger(w, h, y)
            else:
                from cut_cross_entropy import linear_cross_entropy as cce
                found["cut-cross-entropy"] = lambda h, w, y: cce(h, w, y)
        except ImportError as e:
            print(f"# {name}: not installed ({e}); `pip install {BASELINES[name]}` to compare")
    return found


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step(fn, h, w, y) -> None:
    h.grad = w.grad = None
    fn(h, w, y).backward()


def peak_bytes(fn, h, w, y, device: str) -> int:
    h.grad = w.grad = None
    if device == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, h, w, y)
        sync(device)
        return torch.cuda.max_memory_allocated() - base
    with TensorMemoryTracker() as mem:
        step(fn, h, w, y)
    return mem.peak_bytes


def seconds_round_robin(methods: dict[str, Callable], h, w, y, device: str, repeats: int) -> dict[str, float]:
    """Median fwd+bwd seconds per method, the methods taking turns so that load from other
    processes on a shared machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for name, fn in methods.items():
        step(fn, h, w, y)  # warm-up (Triton compile, allocator)
    for _ in range(repeats):
        for name, fn in methods.items():
            sync(device)
            t = time.perf_counter()
            step(fn, h, w, y)
            sync(device)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def gemm_floor_seconds(h, w, device: str, repeats: int) -> float:
    """The FLOP floor at this machine's own matmul rate: 6*N*D*V is three products the size
    of h @ W.T, so three times that product's median time (no loss can do less work)."""
    with torch.no_grad():
        h @ w.T
        ts = []
        for _ in range(max(3, repeats)):
            sync(device)
            t = time.perf_counter()
            h @ w.T
            sync(device)
            ts.append(time.perf_counter() - t)
    return 3 * statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--n", type=int, default=2048, help="tokens")
    ap.add_argument("--d", type=int, nargs="+", default=[256], help="hidden sizes")
    ap.add_argument("--v", type=int, default=32000, help="vocabulary")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--chunk-size", type=int, nargs="+", default=[0],
                    help="rows per chunk, one row of the table each (0: the default, ~256 MiB of fp32 logits)")
    ap.add_argument("--grad-accum", nargs="+", default=["fp32"], choices=["fp32", "input"],
                    help="dtype the head gradient is summed in, one row each (input: the weight's dtype)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare", default="", help=f"comma list of other fused losses, CUDA only: {','.join(BASELINES)}")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    compare = [c for c in args.compare.split(",") if c]
    if unknown := [c for c in compare if c not in BASELINES]:
        print(f"error: --compare {','.join(unknown)}: known are {','.join(BASELINES)}", file=sys.stderr)
        return 2
    if compare and args.device != "cuda":
        print("error: --compare needs --device cuda (Liger and CCE are GPU kernels)", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    impl = "triton" if args.device == "cuda" else "chunked"
    methods = {"naive": naive}
    for c in args.chunk_size:
        for acc in args.grad_accum:
            label = f"ours ({impl}, chunk {c or 'default'}" + (", grad_accum input)" if acc == "input" else ")")
            methods[label] = ours(c or None, acc)
    methods.update(baselines(compare))
    where = torch.cuda.get_device_name() if args.device == "cuda" else \
        f"{cpu_model()}, torch threads {torch.get_num_threads()}"
    print(f"# torch {torch.__version__}, {where}, N={args.n} V={args.v} {args.dtype}, "
          f"fwd+bwd median of {args.repeats} (methods in turn); memory: "
          f"{'cuda max_memory_allocated' if args.device == 'cuda' else 'TensorMemoryTracker live tensor bytes'}")
    print("| D | method | time (s) | time / naive | peak extra memory (MiB) | memory / naive | GFLOP/s (6NDV) |")
    print("|---|---|---|---|---|---|---|")
    for d in args.d:
        g = torch.Generator(device=args.device).manual_seed(0)
        h = torch.randn(args.n, d, device=args.device, generator=g).to(dtype).requires_grad_()
        w = (torch.randn(args.v, d, device=args.device, generator=g) / d ** 0.5).to(dtype).requires_grad_()
        y = torch.randint(0, args.v, (args.n,), device=args.device, generator=g)
        flops = 6 * args.n * d * args.v
        mems = {}
        for name, fn in methods.items():
            try:
                mems[name] = peak_bytes(fn, h, w, y, args.device)
            except torch.OutOfMemoryError:
                mems[name] = None
            h.grad = w.grad = None
            if args.device == "cuda":
                torch.cuda.empty_cache()
        runnable = {name: fn for name, fn in methods.items() if mems[name] is not None}
        secs = seconds_round_robin(runnable, h, w, y, args.device, args.repeats)
        rows = {name: (secs[name], mems[name]) if name in secs else None for name in methods}
        base = rows.get("naive")
        floor = gemm_floor_seconds(h.detach(), w.detach(), args.device, args.repeats)
        print(f"| {d} | floor: 3 x (h @ W.T) at the measured matmul rate | {floor:.3f} | "
              f"{floor / base[0]:.2f}x | | | {flops / floor / 1e9:.1f} |")
        for name, r in rows.items():
            if r is None:
                print(f"| {d} | {name} | OOM | | | | |")
                continue
            t, m = r
            tr = f"{t / base[0]:.2f}x" if base else "-"
            mr = f"{m / base[1]:.3f}x" if base else "-"
            print(f"| {d} | {name} | {t:.3f} | {tr} | {m / 2**20:.1f} | {mr} | {flops / t / 1e9:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
