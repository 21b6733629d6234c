"""Will this config fit, and how fast will it go? A per-GPU memory and throughput estimate
from the model's shape, the DeepSpeed section and the cluster, before anyone waits in
the queue for 64 GPUs to find out.

Memory per GPU (GB = 1e9 bytes), for Llama-shaped decoders:
- model states, mixed precision (bf16/fp16): 2 B/param weights, 2 B/param gradients,
  12 B/param fp32 master + Adam m + v (fp32 training: 4 + 4 + 8). ZeRO-1 shards the
  optimizer states, ZeRO-2 also the gradients, ZeRO-3 also the weights, over all GPUs;
  offload moves the sharded part to host memory.
- ZeRO-3 working set: the prefetch bucket plus the largest gathered module (embedding or
  one decoder layer) in the compute dtype, the gradient reduce bucket, and parameters
  below the persistence threshold kept whole on every GPU.
- activations per micro-batch of seq_len tokens (flash attention, so no s x s scores):
  per layer and token, the saved tensors of norm, q/k/v, rotary, attention output,
  residual and SwiGLU (7H + 3*kv + 4I values); with activation checkpointing only each
  layer's input is kept, plus one layer's full set during its recompute.
- logits: unfused, b*s*V in bf16 plus fp32 copies for softmax and its gradient (10 B per
  value); fused (chunked linear+CE), a chunk x V buffer (compute dtype) that the gradient
  replaces in place, room for one more, plus the fp32
  V x H weight-gradient accumulator (none with loss.head_grad_dtype: input).
- a fixed allowance for the CUDA context, NCCL buffers and allocator fragmentation.
Storage (per checkpoint, per rank and on disk): ZeRO-3 saves each rank's weight partition
(2 B/param in bf16) and its fp32 master + Adam m, v (12 B per trainable param); each rank
adds its data-stream state (shuffle buffers by reference, delia_dist.data.stream_state_bytes).
A resume on another world size first writes DeepSpeed's universal copy (12 B per trainable
param more). Export streams one tensor at a time (delia_dist.checkpoint.export.export_peak_bytes).
Throughput: tokens/s = MFU * peak FLOP/s * GPUs / (6 * N_matmul + 12 * L * H * s), with
N_matmul the parameters that take part in matmuls (all but the input embedding).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

GB = 1e9
# Dense bf16 peak and memory per GPU. "80gb" parts have 80 GiB.
GPUS = {
    "h100-80gb": {"memory": 80 * 2**30, "tflops": 989.0, "label": "H100 SXM 80GB"},
    "a100-80gb": {"memory": 80 * 2**30, "tflops": 312.0, "label": "A100 80GB"},
    "h200": {"memory": 141 * 2**30, "tflops": 989.0, "label": "H200 141GB"},
}
# CUDA context, NCCL communicators and allocator fragmentation, per GPU.
OVERHEAD_BYTES = 3 * GB

_LLAMA3 = {"vocab_size": 128256, "max_position_embeddings": 8192, "tie_word_embeddings": False}
# Shapes of hub models the planner knows without downloading their config.json.
KNOWN_ARCHITECTURES = {
    "meta-llama/meta-llama-3-8b": {**_LLAMA3, "hidden_size": 4096, "num_hidden_layers": 32,
                                   "num_attention_heads": 32, "num_key_value_heads": 8,
                                   "intermediate_size": 14336},
    "meta-llama/meta-llama-3-70b": {**_LLAMA3, "hidden_size": 8192, "num_hidden_layers": 80,
                                    "num_attention_heads": 64, "num_key_value_heads": 8,
                                    "intermediate_size": 28672},
}
_ALIASES = {"meta-llama/llama-3.1-8b": "meta-llama/meta-llama-3-8b",
            "meta-llama/llama-3.1-70b": "meta-llama/meta-llama-3-70b",
            "meta-llama/meta-llama-3.1-8b": "meta-llama/meta-llama-3-8b",
            "meta-llama/meta-llama-3.1-70b": "meta-llama/meta-llama-3-70b"}


class PlanError(ValueError):
    """The planner cannot work out the model's shape from the config."""


@dataclass
class Architecture:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int
    tied: bool
    source: str

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        h, q = self.hidden, self.heads * self.head_dim
        attn = h * q + 2 * h * self.kv_dim + q * h
        return attn + 3 * h * self.intermediate + 2 * h

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def total_params(self) -> int:
        head = 0 if self.tied else self.vocab * self.hidden
        return self.embedding_params() + self.layers * self.layer_params() + self.hidden + head

    def matmul_params(self) -> int:
        """Parameters that multiply activations (the input embedding is a lookup)."""
        return self.layers * self.layer_params() + self.vocab * self.hidden


@dataclass
class Plan:
    model: str
    params: int
    trainable_params: int
    gpus: int
    gpu: str
    gpu_memory_gb: float
    stage: int
    precision: str
    micro_batch: int
    seq_len: int
    checkpointing: bool
    fused_loss: bool
    memory_gb: dict[str, float]      # per GPU, by part
    host_memory_gb: float            # per GPU, offloaded states
    total_gb: float
    fits: bool
    flops_per_token: float
    tokens_per_s: float
    mfu: float
    step_tokens: int
    hours: Optional[float]
    storage_gb: dict[str, float] = field(default_factory=dict)  # checkpoint, data state, export
    advice: list[str] = field(default_factory=list)
    formulas: list[str] = field(default_factory=list)  # how the big numbers were counted

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def render(self) -> str:
        lines = [f"model      {self.model}: {_count(self.params)} params ({_count(self.trainable_params)} trainable)",
                 f"cluster    {self.gpus} x {GPUS[self.gpu]['label']} ({self.gpu_memory_gb:.1f} GB each), "
                 f"ZeRO-{self.stage}, {self.precision}",
                 f"batch      micro-batch {self.micro_batch} x seq {self.seq_len}, activation checkpointing "
                 f"{'on' if self.checkpointing else 'off'}, loss {'fused' if self.fused_loss else 'unfused'}",
                 "", "per-GPU memory (GB = 1e9 bytes)"]
        for part, gb in self.memory_gb.items():
            lines.append(f"  {part:<46s}{gb:9.2f}")
        lines.append(f"  {'total':<46s}{self.total_gb:9.2f}   of {self.gpu_memory_gb:.1f}")
        states = [v for k, v in self.memory_gb.items() if k.startswith(("weights", "gradients", "optimizer"))]
        lines.append(f"  (model states {sum(states):.2f}: weights + optimizer {states[0] + states[2]:.2f}, "
                     f"gradients {states[1]:.2f})")
        if self.host_memory_gb:
            lines.append(f"  {'offloaded to host memory':<46s}{self.host_memory_gb:9.2f}")
        if self.storage_gb:
            lines += ["", "checkpoint and export (GB = 1e9 bytes)"]
            width = max(map(len, self.storage_gb))
            lines += [f"  {part:<{width}s}{gb:10.3f}" for part, gb in self.storage_gb.items()]
        lines += ["", "counted as"] + [f"  {f}" for f in self.formulas]
        lines += ["", f"throughput {self.tokens_per_s:,.0f} tokens/s at MFU {self.mfu:.2f} "
                      f"({self.flops_per_token / 1e9:.1f} GFLOP/token, {self.step_tokens:,} tokens/step)"]
        if self.hours is not None:
            lines.append(f"duration   {self.hours:.1f} h for the configured run")
        verdict = "FITS" if self.fits else "DOES NOT FIT"
        lines += ["", f"{verdict}: {self.total_gb:.1f} GB needed per GPU, {self.gpu_memory_gb:.1f} GB available"]
        lines += [f"  - {a}" for a in self.advice]
        return "\n".join(lines)


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def architecture(model_cfg, vocab: Optional[int] = None) -> Architecture:
    """The model's shape: the inline config, a local config.json, or the known-hub table."""
    if model_cfg.config is not None:
        raw, source = dict(model_cfg.config), "model.config"
    else:
        name = model_cfg.name_or_path
        local = Path(name) / "config.json"
        if local.is_file():
            raw, source = json.loads(local.read_text()), str(local)
        else:
            key = name.lower().rstrip("/").removesuffix("-instruct")
            key = _ALIASES.get(key, key)
            if key not in KNOWN_ARCHITECTURES:  # a local directory not downloaded yet, named as on the hub
                base = key.rsplit("/", 1)[-1]
                key = next((k for k in [*KNOWN_ARCHITECTURES, *_ALIASES] if k.rsplit("/", 1)[-1] == base), key)
                key = _ALIASES.get(key, key)
            if key not in KNOWN_ARCHITECTURES:
                raise PlanError(f"model {name!r}: no local config.json and not a known architecture "
                                f"({', '.join(sorted(KNOWN_ARCHITECTURES))}); point model.name_or_path at "
                                f"a local directory with its config.json")
            raw, source = KNOWN_ARCHITECTURES[key], f"known architecture {key}"
    vocab = vocab or raw.get("vocab_size") or _tokenizer_vocab(model_cfg.tokenizer)
    if not vocab:
        raise PlanError(f"{source} has no vocab_size and the tokenizer is not a local directory; pass --vocab")
    try:
        hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
        return Architecture(hidden=hidden, layers=int(raw["num_hidden_layers"]), heads=heads,
                            kv_heads=int(raw.get("num_key_value_heads") or heads),
                            intermediate=int(raw["intermediate_size"]), vocab=int(vocab),
                            head_dim=int(raw.get("head_dim") or hidden // heads),
                            tied=bool(raw.get("tie_word_embeddings", False)), source=source)
    except KeyError as e:
        raise PlanError(f"{source}: missing {e.args[0]}") from None


def _tokenizer_vocab(tokenizer: Optional[str]) -> Optional[int]:
    path = Path(tokenizer) / "tokenizer.json" if tokenizer else None
    if path is None or not path.is_file():
        return None
    data = json.loads(path.read_text())
    ids = list(data.get("model", {}).get("vocab", {}).values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1 if ids else None


def _lora_trainable(arch: Architecture, lora) -> int:
    dims = {"q_proj": (arch.hidden, arch.heads * arch.head_dim), "k_proj": (arch.hidden, arch.kv_dim),
            "v_proj": (arch.hidden, arch.kv_dim), "o_proj": (arch.heads * arch.head_dim, arch.hidden),
            "gate_proj": (arch.hidden, arch.intermediate), "up_proj": (arch.hidden, arch.intermediate),
            "down_proj": (arch.intermediate, arch.hidden)}
    per_layer = sum(lora.r * (i + o) for m, (i, o) in dims.items() if m in lora.target_modules)
    embeddings = (1 if arch.tied else 2) * arch.embedding_params() if lora.train_embeddings else 0
    if "embed_tokens" in lora.target_modules:  # lora_embedding_A [r, vocab] + B [hidden, r]
        embeddings += lora.r * (arch.vocab + arch.hidden)
    return arch.layers * per_layer + embeddings


def trained_architecture(model_cfg, vocab: Optional[int] = None) -> Architecture:
    """The shape as trained: new special tokens grow the vocabulary, padded as the trainer pads it."""
    arch = architecture(model_cfg, vocab)
    pad = model_cfg.pad_vocab_to_multiple_of
    arch.vocab = -(-(arch.vocab + len(model_cfg.new_tokens)) // pad) * pad
    return arch


def _trainable(arch: Architecture, model_cfg) -> int:
    return arch.total_params() if model_cfg.finetune == "full" else _lora_trainable(arch, model_cfg.lora)


def _model_states_bytes(n: int, trainable: int, mixed: bool) -> int:
    """What ZeRO saves: the weights (2 B/param mixed, 4 fp32) and the fp32 master + Adam m, v."""
    return n * (2 if mixed else 4) + trainable * (12 if mixed else 8)


def _data_state_bytes(cfg) -> int:
    from .data import stream_state_bytes
    d = cfg.data
    return stream_state_bytes(d.shuffle_buffer, d.num_workers, d.seq_len, n_sources=len(d.sources))


def checkpoint_bytes(cfg, world: int) -> int:
    """One checkpoint's bytes on disk over all ranks (the "whole step dir" line of the plan):
    the room the trainer asks for before its first save."""
    arch = trained_architecture(cfg.model)
    n = arch.total_params()
    mixed = cfg.train.precision in ("bf16", "fp16")
    return _model_states_bytes(n, _trainable(arch, cfg.model), mixed) + _data_state_bytes(cfg) * world


def plan(cfg, *, nodes: int, gpus_per_node: int, gpu: str = "h100-80gb", mfu: float = 0.4,
         vocab: Optional[int] = None) -> Plan:
    if gpu not in GPUS:
        raise PlanError(f"unknown GPU {gpu!r}; choose from {', '.join(GPUS)}")
    if nodes < 1 or gpus_per_node < 1:
        raise PlanError("--nodes and --gpus-per-node must be >= 1")
    if not 0 < mfu <= 1:
        raise PlanError(f"MFU must be in (0, 1], got {mfu}")
    arch = trained_architecture(cfg.model, vocab)
    m, ds, t = cfg.model, cfg.deepspeed, cfg.train
    world = nodes * gpus_per_node
    n = arch.total_params()
    trainable = _trainable(arch, m)
    mixed = t.precision in ("bf16", "fp16")
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
    fused = cfg.loss.impl != "naive"
    if fused:
        from kernels.linear_ce import chunk_rows
        chunk = chunk_rows(tokens, arch.vocab, cfg.loss.chunk_size, w_bytes)
        accum = 4 if cfg.loss.head_grad_dtype == "fp32" else 0  # "input": summed into the bf16 grad itself
        logits = 2 * chunk * arch.vocab * w_bytes + arch.vocab * arch.hidden * accum + tokens * arch.hidden * 2
    else:
        logits = tokens * arch.vocab * 10
    mem[f"logits + loss ({'fused, chunk x V' if fused else 'unfused, full b*s*V'})"] = logits
    mem["CUDA context, NCCL, fragmentation"] = OVERHEAD_BYTES
    total = sum(mem.values())
    capacity = GPUS[gpu]["memory"]
    fits = total <= capacity

    flops_per_token = 6 * arch.matmul_params() + 12 * arch.layers * arch.heads * arch.head_dim * cfg.data.seq_len
    tokens_per_s = mfu * GPUS[gpu]["tflops"] * 1e12 * world / flops_per_token
    step_tokens = tokens * t.grad_accum * world
    run_tokens = (t.max_steps * step_tokens if t.max_steps else cfg.data.token_budget)
    result = Plan(model=m.name_or_path or "model.config", params=n, trainable_params=trainable, gpus=world,
                  gpu=gpu, gpu_memory_gb=capacity / GB, stage=stage, precision=t.precision,
                  micro_batch=t.micro_batch_size, seq_len=cfg.data.seq_len,
                  checkpointing=m.gradient_checkpointing, fused_loss=fused,
                  memory_gb={k: v / GB for k, v in mem.items()}, host_memory_gb=host / GB,
                  total_gb=total / GB, fits=fits, flops_per_token=flops_per_token, tokens_per_s=tokens_per_s,
                  mfu=mfu, step_tokens=step_tokens,
                  hours=run_tokens / tokens_per_s / 3600 if run_tokens else None)
    result.storage_gb = {k: v / GB for k, v in _storage(arch, cfg, world, gpus_per_node, n, trainable,
                                                        w_bytes, mixed).items()}
    result.advice = _advice(result, arch, cfg, mem, capacity, world, gpus_per_node)
    result.formulas = _formulas(arch, cfg, mixed, world, fused, chunk if fused else None)
    return result


def _storage(arch: Architecture, cfg, world: int, gpus_per_node: int, n: int, trainable: int,
             w_bytes: int, mixed: bool) -> dict[str, float]:
    """Bytes a checkpoint writes, the data state inside it, an elastic resume's extra copy
    and the streaming export's peak memory: what decides disk quota, save time and which
    node can export."""
    from .checkpoint.export import export_peak_bytes

    model_states = _model_states_bytes(n, trainable, mixed)
    data_state = _data_state_bytes(cfg)
    largest = max(arch.embedding_params(), arch.hidden * arch.intermediate)
    lora = 0
    if cfg.model.finetune == "lora":
        lora = max(arch.hidden * arch.heads * arch.head_dim, arch.hidden * arch.intermediate)
        if "embed_tokens" in cfg.model.lora.target_modules:  # its merge makes a [vocab, hidden] product
            lora = max(lora, arch.embedding_params())
    out_bytes = 2 if (cfg.model.dtype in ("bfloat16", "float16") or mixed) else 4
    return {
        "checkpoint: model + optimizer states, per rank": model_states / world,
        f"checkpoint: per node ({gpus_per_node} ranks)": model_states / world * gpus_per_node,
        "checkpoint: data-stream state, per rank": data_state,
        f"checkpoint: whole step dir ({world} ranks)": model_states + data_state * world,
        # A save first removes what retention would (delia_dist/checkpoint/room.py) but keeps
        # the newest until the new one is complete: keep_last step dirs at once, at least 2.
        f"checkpoint dir at its fullest (keep_last={cfg.checkpoint.keep_last}, during a save)":
            (model_states + data_state * world) * max(cfg.checkpoint.keep_last, 2),
        "elastic resume: universal copy (once, on disk)": trainable * 12,
        **elastic_resume_reads(trainable, data_state, world),
        "export: peak memory of the streaming writer": export_peak_bytes(largest, out_bytes, lora),
        "export: HF safetensors on disk": n * out_bytes,
    }


def elastic_resume_reads(trainable: int, data_state: float, world: int) -> dict[str, float]:
    """Bytes an elastic resume onto `world` ranks reads, counted for an old job of the same
    size: each rank its own 1/world partition of the universal copy (fp32 master + Adam m, v,
    12 B per trainable parameter; checkpoint/universal_slices.py) and its own re-mapped data
    state; rank 0 reads every old rank's data state once to re-deal the epoch
    (checkpoint/elastic.remapped_rank_state). DeepSpeed's own loader read the whole copy on
    every rank: world x 12 B per trainable parameter from the filesystem."""
    universal = trainable * 12
    return {
        f"elastic resume: universal copy each rank reads (1/{world})": universal / world,
        f"elastic resume: old data states rank 0 re-maps once ({world} files)": data_state * world,
        f"elastic resume: read from the filesystem, all {world} ranks": universal + 2 * data_state * world,
    }


def _formulas(arch: Architecture, cfg, mixed: bool, world: int, fused: bool, chunk: Optional[int]) -> list[str]:
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
    if fused:
        vh = ("V*H*4 (fp32 head-gradient sum; loss.head_grad_dtype: input drops it)" if cfg.loss.head_grad_dtype == "fp32"
              else "0*V*H (loss.head_grad_dtype: input sums into the bf16 gradient)")
        logits = (f"fused: 2*chunk*V*{2 if mixed else 4} (logits/gradient buffer + GEMM workspace) + {vh} + b*s*H*2 B, chunk {chunk}, V {v} "
                  f"(unfused would be b*s*V*10 = {b * s * v * 10 / GB:.1f} GB)")
    else:
        logits = f"unfused: b*s*V*10 B (bf16 logits + fp32 softmax + fp32 grad), V {v}"
    return [f"model states  {states}, ZeRO-{stage}: {sharded}",
            f"activations   {acts}, b {b}, s {s}, L {n_layers}",
            f"logits        {logits}",
            "FLOPs/token   6*N_matmul + 12*L*H*s (N_matmul: all params but the input embedding, a lookup)"]


def _advice(p: Plan, arch: Architecture, cfg, mem: dict[str, float], capacity: float, world: int,
            gpus_per_node: int) -> list[str]:
    if p.fits:
        return [f"{(capacity - sum(mem.values())) / GB:.1f} GB headroom per GPU"]
    out = []
    over = sum(mem.values()) - capacity
    if not cfg.model.gradient_checkpointing:
        out.append("set model.gradient_checkpointing: true (keeps only each layer's input)")
    if not p.fused_loss:
        out.append("set loss.impl: fused (logits in chunks instead of the full b*s*V tensor)")
    if cfg.deepspeed.stage < 3:
        out.append("use deepspeed.stage: 3 to shard the weights too")
    states = sum(v for k, v in mem.items() if k.startswith(("weights", "gradients", "optimizer")))
    if states > capacity / 2 and cfg.deepspeed.stage == 3:
        # Leave half of each GPU to activations, logits and the gathered working set.
        nodes = -(-int(states * world / (capacity / 2) + 1) // gpus_per_node)
        out.append(f"shard the states over more GPUs: {nodes} nodes x {gpus_per_node} keeps them under half "
                   f"of each GPU ({states / GB:.1f} GB per GPU now)")
    if cfg.train.micro_batch_size > 1:
        out.append("lower train.micro_batch_size (and raise grad_accum to keep the global batch)")
    if cfg.deepspeed.offload_optimizer == "none":
        out.append("offload the optimizer states: deepspeed.offload_optimizer: cpu (slower steps)")
    out.append(f"or shorten data.seq_len; {over / GB:.1f} GB must go")
    return out
