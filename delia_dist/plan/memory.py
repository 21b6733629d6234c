"""Per-GPU memory of one training step: sharded model states, ZeRO-3's gathered working set,
activations, logits and a fixed allowance; and the arithmetic behind them, for the report."""
from __future__ import annotations

from typing import Optional

from .shape import Architecture

GB = 1e9
# CUDA context, NCCL communicators and allocator fragmentation, per GPU.
OVERHEAD_BYTES = 3 * GB


def per_gpu(arch: Architecture, cfg, world: int, n: int, trainable: int,
            mixed: bool) -> tuple[dict[str, float], float, Optional[int]]:
    """(bytes per GPU by part, bytes offloaded to host memory per GPU, fused-loss chunk rows)."""
    m, ds, t = cfg.model, cfg.deepspeed, cfg.train
    w_bytes = 2 if mixed else 4
    stage = ds.stage

    def shard(count: float, sharded: bool) -> float:
        return count / world if sharded else count

    weights = shard(n * w_bytes, stage >= 3)
    grads = shard(trainable * w_bytes, stage >= 2)
    optim = shard(trainable * (12 if mixed else 8), stage >= 1)
    host = 0.0
    if ds.offload_optimizer != "none":
        host += optim
        optim = 0.0
    if ds.offload_param != "none":
        host += weights
        weights = 0.0

    mem: dict[str, float] = {
        f"weights ({'bf16' if mixed else 'fp32'}{', sharded' if stage >= 3 else ''})": weights,
        f"gradients{' (sharded)' if stage >= 2 else ''}": grads,
        f"optimizer: fp32 master + Adam m, v{' (sharded)' if stage >= 1 else ''}": optim,
    }
    if stage == 3:
        largest = max(arch.layer_params(), arch.embedding_params())
        live = min(ds.stage3_prefetch_bucket_size + largest, max(ds.stage3_max_live_parameters, largest), n)
        persistent = arch.layers * 2 * arch.hidden + arch.hidden  # norms below the threshold
        if arch.hidden >= ds.stage3_param_persistence_threshold:
            persistent = 0
        mem["ZeRO-3 gathered params (prefetch + live)"] = (live + persistent) * w_bytes
    mem["gradient reduce bucket"] = min(ds.reduce_bucket_size, trainable) * (w_bytes + 4)

    tokens = t.micro_batch_size * cfg.data.seq_len
    per_token_layer = 2 * (7 * arch.hidden + 3 * arch.kv_dim + 4 * arch.intermediate)
    if m.gradient_checkpointing:
        acts = tokens * (arch.layers * arch.hidden * 2 + per_token_layer)
    else:
        acts = tokens * arch.layers * per_token_layer
    mem[f"activations ({'checkpointed' if m.gradient_checkpointing else 'all layers kept'})"] = acts
    chunk = None
    if cfg.loss.impl != "naive":
        from kernels.linear_ce import chunk_rows
        chunk = chunk_rows(tokens, arch.vocab, cfg.loss.chunk_size, w_bytes)
        accum = 4 if cfg.loss.head_grad_dtype == "fp32" else 0  # "input": summed into the bf16 grad itself
        logits = 2 * chunk * arch.vocab * w_bytes + arch.vocab * arch.hidden * accum + tokens * arch.hidden * 2
    else:
        logits = tokens * arch.vocab * 10
    mem[f"logits + loss ({'fused, chunk x V' if chunk else 'unfused, full b*s*V'})"] = logits
    mem["CUDA context, NCCL, fragmentation"] = OVERHEAD_BYTES
    return mem, host, chunk


def formulas(arch: Architecture, cfg, mixed: bool, world: int, chunk: Optional[int]) -> list[str]:
    """The arithmetic behind the table, with this model's numbers, so a user can check it."""
    b, s, h, n_layers = cfg.train.micro_batch_size, cfg.data.seq_len, arch.hidden, arch.layers
    kv, inter, v = arch.kv_dim, arch.intermediate, arch.vocab
    stage = cfg.deepspeed.stage
    states = ("bf16 weights 2 + bf16 grads 2 + fp32 master 4 + Adam m, v 8 = 16 B/param" if mixed
              else "fp32 weights 4 + grads 4 + Adam m, v 8 = 16 B/param")
    sharded = {0: "not sharded", 1: f"optimizer part / {world}", 2: f"grads + optimizer / {world}",
               3: f"all / {world} GPUs"}[stage]
    per_layer = f"2*(7H + 3kv + 4I) = 2*(7*{h} + 3*{kv} + 4*{inter})"
    if cfg.model.gradient_checkpointing:
        acts = f"b*s*(L*H*2 + {per_layer}) B (each layer's bf16 input + one layer recomputed)"
    else:
        acts = f"b*s*L*{per_layer} B (every layer's saved tensors; checkpointed: b*s*(L*H*2 + one layer))"
    if chunk:
        vh = ("V*H*4 (fp32 head-gradient sum; loss.head_grad_dtype: input drops it)"
              if cfg.loss.head_grad_dtype == "fp32"
              else "0*V*H (loss.head_grad_dtype: input sums into the bf16 gradient)")
        logits = (f"fused: 2*chunk*V*{2 if mixed else 4} (logits/gradient buffer + GEMM workspace) + {vh} + "
                  f"b*s*H*2 B, chunk {chunk}, V {v} "
                  f"(unfused would be b*s*V*10 = {b * s * v * 10 / GB:.1f} GB)")
    else:
        logits = f"unfused: b*s*V*10 B (bf16 logits + fp32 softmax + fp32 grad), V {v}"
    return [f"model states  {states}, ZeRO-{stage}: {sharded}",
            f"activations   {acts}, b {b}, s {s}, L {n_layers}",
            f"logits        {logits}",
            "FLOPs/token   6*N_matmul + 12*L*H*s (N_matmul: all params but the input embedding, a lookup)"]
