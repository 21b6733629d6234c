"""One-device training-step throughput, MFU and peak memory: a Llama built from a config (no
download), our fused loss beside the naive full-logits loss, same model, data and seed, in
one run.

    python bench/bench_step.py --device cuda --size 1b           # H100/H200: tokens/s, MFU
    python bench/bench_step.py --device cpu --size tiny --steps 2 # the pipeline, on CPU

The step is delia's own: `CausalLMWithLoss` (the trainer's loss module) forward with the
loss config's impl, backward, AdamW. Parameters are bf16 (fp32 on CPU) without fp32 master
copies, so this measures compute, not ZeRO-3 (one device; the image of the GPU machines has
no DeepSpeed). MFU = tokens/s x (6 x matmul params + 12 x layers x hidden x seq) / peak,
the formula `delia plan` uses; peak is the GPU's dense bf16 spec, and the same is given
against this run's own measured bf16 matmul rate.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from delia_dist.config.train import LossConfig  # noqa: E402
from delia_dist.train.loss import CausalLMWithLoss  # noqa: E402

# Llama-3.2-1B and Llama-3.1-8B shapes (untied head here: the loss reads the head weight).
SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 intermediate_size=128, vocab_size=1000),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, from the spec sheets


def build(size: str, seq: int, dtype: torch.dtype, device: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(**SIZES[size], max_position_embeddings=max(seq, 128), tie_word_embeddings=False,
                      rms_norm_eps=1e-5, attn_implementation="sdpa")
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model


def matmul_params(model) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measured_matmul_rate(device: str, dtype: torch.dtype) -> float:
    n = 8192 if device == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    ts = []
    for _ in range(10):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(ts)


def run(impl: str, args, dtype) -> dict:
    model = build(args.size, args.seq, dtype, args.device)
    if args.checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    wrapped = CausalLMWithLoss(model, LossConfig(impl=impl, head_grad_dtype=args.grad_accum), zero3=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=args.device == "cuda")
    g = torch.Generator().manual_seed(1)
    vocab = SIZES[args.size]["vocab_size"]
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(args.device)
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    labels[:, : args.seq // 4] = -100  # prompt tokens: no loss, as in instruction tuning
    pos = torch.arange(args.seq, device=args.device).expand(args.batch, -1)
    n_loss = int((labels != -100).sum())
    losses, times = [], []
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        sync(args.device)
        t = time.perf_counter()
        total, _ = wrapped(ids, pos, labels)
        (total / n_loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(args.device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
        losses.append(float(total.detach()) / n_loss)
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else None
    n_mm = matmul_params(model)
    cfg = SIZES[args.size]
    flops_token = 6 * n_mm + 12 * cfg["num_hidden_layers"] * cfg["hidden_size"] * args.seq
    del wrapped, model, opt
    if args.device == "cuda":
        torch.cuda.empty_cache()
    sec = statistics.median(times)
    return {"losses": losses, "sec": sec, "tokens_s": args.batch * args.seq / sec, "peak": peak,
            "flops_token": flops_token, "matmul_params": n_mm}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--size", default="1b", choices=sorted(SIZES))
    ap.add_argument("--batch", type=int, default=4, help="rows per step")
    ap.add_argument("--seq", type=int, default=4096, help="tokens per row")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--impls", default="fused,naive", help="loss.impl values, one row each")
    ap.add_argument("--grad-accum", default="fp32", choices=["fp32", "input"], help="loss.head_grad_dtype")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    impls = [i for i in args.impls.split(",") if i]
    if bad := [i for i in impls if i not in ("fused", "chunked", "naive")]:
        print(f"error: --impls {','.join(bad)}: known are fused, chunked, naive", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    rate = measured_matmul_rate(args.device, dtype)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None) if args.device == "cuda" else None
    rows = {}
    for impl in impls:
        try:
            rows[impl] = run(impl, args, dtype)
        except torch.OutOfMemoryError:
            rows[impl] = None
            torch.cuda.empty_cache()
    first = next(r for r in rows.values() if r)
    print(f"# {name}, torch {torch.__version__}, Llama {args.size} ({first['matmul_params'] / 1e9:.2f}B matmul "
          f"params), {dtype}, batch {args.batch} x seq {args.seq}, checkpointing {args.checkpointing}, "
          f"grad_accum {args.grad_accum}; median of {args.steps} steps after {args.warmup} warm-up; "
          f"measured {dtype} matmul rate {rate / 1e12:.1f} TFLOP/s")
    print("| loss impl | step (s) | tokens/s | MFU (spec peak) | of measured matmul rate | peak memory (GiB) | "
          "loss step 0 | loss last |")
    print("|---|---|---|---|---|---|---|---|")
    for impl, r in rows.items():
        if r is None:
            print(f"| {impl} | OOM | | | | | | |")
            continue
        achieved = r["tokens_s"] * r["flops_token"]
        mfu = f"{achieved / peak:.3f}" if peak else "-"
        mem = f"{r['peak'] / 2**30:.1f}" if r["peak"] is not None else "-"
        print(f"| {impl} | {r['sec']:.3f} | {r['tokens_s']:.0f} | {mfu} | {achieved / rate:.3f} | {mem} | "
              f"{r['losses'][0]:.4f} | {r['losses'][-1]:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
