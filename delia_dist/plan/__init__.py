"""Will this config fit, and how fast will it go? A per-GPU memory and throughput estimate
from the model's shape, the DeepSpeed section and the cluster, before anyone waits in
the queue for 64 GPUs to find out.

Memory per GPU (GB = 1e9 bytes), for Llama-shaped decoders (memory.py):
- model states, mixed precision (bf16/fp16): 2 B/param weights, 2 B/param gradients,
  12 B/param fp32 master + Adam m + v (fp32 training: 4 + 4 + 8). ZeRO-1 shards the
  optimizer states, ZeRO-2 also the gradients, ZeRO-3 also the weights, over all GPUs;
  offload moves the sharded part to host memory.
- ZeRO-3 working set: the prefetch bucket plus the largest gathered module (embedding or
  one decoder layer) in the compute dtype, the gradient reduce bucket, and parameters
  below the persistence threshold kept whole on every GPU.
- activations per micro-batch of seq_len tokens (flash or memory-efficient sdpa kernels, so
  no s x s scores): per layer and token, the saved tensors of norm, q/k/v, rotary,
  attention output, residual and SwiGLU (7H + 3*kv + 4I values); with activation
  checkpointing only each layer's input is kept, plus one layer's full set during its recompute.
- logits: unfused, b*s*V in bf16 plus fp32 copies for softmax and its gradient (10 B per
  value); fused (chunked linear+CE), a chunk x V buffer (compute dtype) that the gradient
  replaces in place, room for one more, plus the fp32
  V x H weight-gradient accumulator (none with loss.head_grad_dtype: input).
- a fixed allowance for the CUDA context, NCCL buffers and allocator fragmentation.
Storage and checkpoint time (checkpoint.py): ZeRO-3 saves each rank's weight partition
(2 B/param in bf16) and its fp32 master + Adam m, v (12 B per trainable param); each rank
adds its data-stream state (shuffle buffers by reference, delia_dist.data.stream_state_bytes).
A resume on another world size first writes DeepSpeed's universal copy (12 B per trainable
param more). Export streams one tensor at a time (delia_dist.checkpoint.export.export_peak_bytes).
Seconds are those bytes over checkpoint.fs_bandwidth_gbps.
Throughput: tokens/s = MFU * peak FLOP/s * GPUs / (6 * N_matmul + 12 * L * H * s), with
N_matmul the parameters that take part in matmuls (all but the input embedding).
"""
from __future__ import annotations

import os
from typing import Optional

from . import checkpoint, memory
from .checkpoint import checkpoint_bytes
from .report import Plan, advice
from .shape import KNOWN_ARCHITECTURES, Architecture, PlanError, architecture, trainable_params, trained_architecture

__all__ = ["GPUS", "KNOWN_ARCHITECTURES", "Architecture", "Plan", "PlanError", "architecture", "checkpoint_bytes",
           "plan", "trained_architecture"]

GB = 1e9
# Dense bf16 peak and memory per GPU. "80gb" parts have 80 GiB.
GPUS = {
    "h100-80gb": {"memory": 80 * 2**30, "tflops": 989.0, "label": "H100 SXM 80GB"},
    "a100-80gb": {"memory": 80 * 2**30, "tflops": 312.0, "label": "A100 80GB"},
    "h200": {"memory": 141 * 2**30, "tflops": 989.0, "label": "H200 141GB"},
}


def dist_timeout_s() -> float:
    """The collective timeout the job's ranks get (launcher: --timeout, $DELIA_DIST_TIMEOUT)."""
    return float(os.environ.get("DELIA_DIST_TIMEOUT", checkpoint.DEFAULT_DIST_TIMEOUT_S))


def plan(cfg, *, nodes: int, gpus_per_node: int, gpu: str = "h100-80gb", mfu: float = 0.4,
         vocab: Optional[int] = None) -> Plan:
    if gpu not in GPUS:
        raise PlanError(f"unknown GPU {gpu!r}; choose from {', '.join(GPUS)}")
    if nodes < 1 or gpus_per_node < 1:
        raise PlanError("--nodes and --gpus-per-node must be >= 1")
    if not 0 < mfu <= 1:
        raise PlanError(f"MFU must be in (0, 1], got {mfu}")
    arch = trained_architecture(cfg.model, vocab)
    m, t = cfg.model, cfg.train
    world = nodes * gpus_per_node
    n = arch.total_params()
    trainable = trainable_params(arch, m)
    mixed = t.precision in ("bf16", "fp16")

    mem, host, chunk = memory.per_gpu(arch, cfg, world, n, trainable, mixed)
    total = sum(mem.values())
    capacity = GPUS[gpu]["memory"]

    flops_per_token = 6 * arch.matmul_params() + 12 * arch.layers * arch.heads * arch.head_dim * cfg.data.seq_len
    tokens_per_s = mfu * GPUS[gpu]["tflops"] * 1e12 * world / flops_per_token
    step_tokens = t.micro_batch_size * cfg.data.seq_len * t.grad_accum * world
    run_tokens = (t.max_steps * step_tokens if t.max_steps else cfg.data.token_budget)
    result = Plan(model=m.name_or_path or "model.config", params=n, trainable_params=trainable, gpus=world,
                  gpu=gpu, gpu_label=GPUS[gpu]["label"], gpu_memory_gb=capacity / GB, stage=cfg.deepspeed.stage,
                  precision=t.precision, micro_batch=t.micro_batch_size, seq_len=cfg.data.seq_len,
                  checkpointing=m.gradient_checkpointing, fused_loss=chunk is not None,
                  memory_gb={k: v / GB for k, v in mem.items()}, host_memory_gb=host / GB,
                  total_gb=total / GB, fits=total <= capacity, flops_per_token=flops_per_token,
                  tokens_per_s=tokens_per_s, mfu=mfu, step_tokens=step_tokens,
                  hours=run_tokens / tokens_per_s / 3600 if run_tokens else None)
    storage = checkpoint.storage(arch, cfg, world, gpus_per_node, n, trainable, mixed)
    result.storage_gb = {k: v / GB for k, v in storage.items()}
    data_states = storage["checkpoint: data-stream state, per rank"] * world
    result.checkpoint_times = checkpoint.times(n, trainable, mixed, data_states, cfg, step_tokens / tokens_per_s,
                                               dist_timeout_s())
    result.advice = advice(result, cfg, mem, capacity, world, gpus_per_node)
    result.formulas = memory.formulas(arch, cfg, mixed, world, chunk)
    return result
