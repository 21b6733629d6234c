"""Checkpoint -> Hugging Face model directory (safetensors, config, generation config,
tokenizer with the new tokens), loadable by transformers and vLLM.

Streams: one parameter at a time is gathered from the ZeRO-3 shards (zero_reader), has its
LoRA adapter merged, is cast to the model's dtype and written straight into its place in a
safetensors file whose header was written first. No full state dict and no model object
exist, so a 70B export needs one parameter plus a constant of memory instead of
~2 x 282 GB (export_peak_bytes has the arithmetic). Runs in one plain process, no GPU.
"""
from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import atomic, storage
from . import trainer_state
from .manager import is_complete

log = logging.getLogger(__name__)
WRAPPER_PREFIX = "model."  # CausalLMWithLoss holds the HF model as .model
PEFT_PREFIX = "base_model.model."
ADAPTER = "default"
ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
DEFAULT_SHARD_BYTES = 4 << 30


@dataclass
class OutTensor:
    name: str           # HF name in the exported model
    source: str         # DeepSpeed name of the weight
    lora: tuple | None  # (A name, B name, scaling, transposed) to merge into it
    shape: torch.Size
    dtype: torch.dtype


def export_peak_bytes(largest_numel: int, out_dtype_bytes: int, largest_lora_numel: int = 0,
                      remap_bytes: int = 1 << 30) -> int:
    """Peak memory of the streaming export beyond the interpreter: the largest parameter's
    mapped input pages (fp32) + its gathered fp32 copy + its cast copy (a LoRA-merged one
    also holds the fp32 B @ A product) + the pages mapped since the last re-open."""
    return max(largest_numel * (8 + out_dtype_bytes),
               largest_lora_numel * (12 + out_dtype_bytes)) + remap_bytes


def plan_tensors(reader, lora_cfg, tied: bool) -> list[OutTensor]:
    """Map DeepSpeed names to the merged HF model's names (LoRA folded in, PEFT wrappers and
    tied aliases dropped). Raises on a name it does not understand rather than guess."""
    names = [n for n in reader.names() if n not in reader.aliases]
    stripped = {}
    for n in names:
        s = n[len(WRAPPER_PREFIX):] if n.startswith(WRAPPER_PREFIX) else n
        stripped[n] = s[len(PEFT_PREFIX):] if s.startswith(PEFT_PREFIX) else s
    by_hf = {v: k for k, v in stripped.items()}
    out = []
    for src, name in stripped.items():
        if any(f"{part}.{ADAPTER}" in name
               for part in (".lora_A", ".lora_B", ".lora_embedding_A", ".lora_embedding_B")) \
                or ".original_module." in name:
            continue  # merged below / PEFT's frozen copy of a module trained in full
        if "lora_" in name:
            raise ValueError(f"checkpoint parameter {src}: LoRA layout this export does not know")
        hf, lora = name.replace(f".modules_to_save.{ADAPTER}.", "."), None
        if ".base_layer." in name:
            prefix, leaf = name.split(".base_layer.")
            hf = f"{prefix}.{leaf}"
            if leaf == "weight":
                a, b = by_hf.get(f"{prefix}.lora_A.{ADAPTER}.weight"), by_hf.get(f"{prefix}.lora_B.{ADAPTER}.weight")
                transposed = False
                if a is None and b is None:  # an embedding's adapter: delta = (B @ A).T, [vocab, hidden]
                    a, b = (by_hf.get(f"{prefix}.lora_embedding_A.{ADAPTER}"),
                            by_hf.get(f"{prefix}.lora_embedding_B.{ADAPTER}"))
                    transposed = True
                if a is None or b is None:
                    raise ValueError(f"checkpoint parameter {src}: LoRA adapter weights missing")
                if lora_cfg is None:
                    raise ValueError(f"checkpoint parameter {src} has a LoRA adapter but model.finetune is not lora")
                lora = (a, b, lora_cfg.alpha / lora_cfg.r, transposed)
        shape = reader.shape(src)
        dtype = reader.dtype(src)
        out.append(OutTensor(hf, src, lora, shape, dtype))
    hf_names = [t.name for t in out]
    if len(set(hf_names)) != len(hf_names):
        raise ValueError(f"two checkpoint parameters map to one exported name: {sorted(hf_names)[:10]}")
    if tied:
        heads = [t for t in out if t.name == "lm_head.weight"]
        embeds = [t for t in out if t.name.endswith("embed_tokens.weight")]
        if heads and embeds:
            if not torch.equal(reader.get(heads[0].source), reader.get(embeds[0].source)):
                raise ValueError("tie_word_embeddings is true but the checkpoint's lm_head and embed_tokens "
                                 "differ: it was trained untied; export it with tie_word_embeddings=false")
        out = [t for t in out if t.name != "lm_head.weight"]
    return out


def _materialize(reader, t: OutTensor, dtype: torch.dtype) -> torch.Tensor:
    w = reader.get(t.source)
    if t.lora is not None:
        a, b, scaling, transposed = t.lora
        delta = reader.get(b) @ reader.get(a)
        w += scaling * (delta.T if transposed else delta)
    return w.to(dtype) if w.is_floating_point() else w


def _shard(tensors: list[OutTensor], out_dtype: torch.dtype, max_bytes: int) -> list[list[OutTensor]]:
    shards, size = [[]], 0
    for t in tensors:
        nbytes = t.shape.numel() * _itemsize(t, out_dtype)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    return shards


def _itemsize(t: OutTensor, out_dtype: torch.dtype) -> int:
    return (out_dtype if t.dtype.is_floating_point else t.dtype).itemsize


def write_safetensors(path: Path, reader, tensors: list[OutTensor], out_dtype: torch.dtype) -> int:
    """Header first (every shape is known), then each tensor's bytes as it is made."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for t in tensors:
        dtype = out_dtype if t.dtype.is_floating_point else t.dtype
        nbytes = t.shape.numel() * dtype.itemsize
        header[t.name] = {"dtype": ST_DTYPES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic.open_for_write(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            value = _materialize(reader, t, out_dtype).contiguous()
            if tuple(value.shape) != tuple(t.shape):
                raise ValueError(f"{t.name}: made shape {tuple(value.shape)}, planned {tuple(t.shape)}")
            f.write(memoryview(value.reshape(-1).view(torch.uint8).numpy()))
            del value
    return offset


def _resolve(ckpt: Path) -> Path:
    if ckpt.is_dir() and (ckpt / "latest").is_file() and not is_complete(ckpt):
        ckpt = ckpt / (ckpt / "latest").read_text().strip()
    if not is_complete(ckpt):
        raise FileNotFoundError(f"{ckpt} is not a complete delia checkpoint (no COMPLETE marker)")
    return ckpt


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: str = "auto",
                      max_shard_bytes: int = DEFAULT_SHARD_BYTES, remap_bytes: int = 1 << 30) -> Path:
    from transformers import AutoConfig, AutoTokenizer

    from ..model.build import DTYPES
    from .zero_reader import ZeroReader

    ckpt, out = _resolve(Path(ckpt)), Path(out)
    saved = trainer_state.read(ckpt)
    cfg = saved.config()
    tokenizer = AutoTokenizer.from_pretrained(ckpt / "tokenizer")
    if cfg.model.name_or_path:
        config = AutoConfig.from_pretrained(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    else:
        raw = dict(cfg.model.config)
        config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    new_tokens = saved.part("new_tokens")
    config.vocab_size = new_tokens["new_vocab"]
    out_dtype = DTYPES.get(dtype if dtype != "auto" else cfg.model.dtype, torch.float32)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    reader = ZeroReader(ckpt, remap_bytes=remap_bytes)
    tensors = plan_tensors(reader, cfg.model.lora if cfg.model.finetune == "lora" else None, tied)
    if not any(t.name == "lm_head.weight" for t in tensors) and not tied:
        raise ValueError(f"{ckpt}: no lm_head.weight in the checkpoint and the config is untied")
    shards = _shard(tensors, out_dtype, max_shard_bytes)
    need = sum(t.shape.numel() * _itemsize(t, out_dtype) for t in tensors)
    what = f"the export of {ckpt.name}"
    with storage.writing(what, out, need):
        storage.require_free(what, out, need, note="nothing written")
        out.mkdir(parents=True, exist_ok=True)
        _write(out, ckpt, saved, new_tokens, reader, tensors, shards, config, tokenizer, out_dtype)
    return out


def _write(out: Path, ckpt: Path, saved: trainer_state.TrainerState, new_tokens: dict, reader, tensors: list[OutTensor],
           shards: list[list[OutTensor]], config, tokenizer, out_dtype: torch.dtype) -> None:
    from transformers import GenerationConfig

    weight_map, total = {}, 0
    for i, group in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_safetensors(out / fname, reader, group, out_dtype)
        weight_map.update({t.name: fname for t in group})
        reader.close()
    if len(shards) > 1:
        atomic.write_text(out / "model.safetensors.index.json", json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1, sort_keys=True))
    config.use_cache = True
    config.dtype = out_dtype
    config.architectures = config.architectures or [_causal_lm_class(config)]
    config.save_pretrained(out)
    gen = GenerationConfig.from_model_config(config)
    gen.pad_token_id = tokenizer.pad_token_id
    from ..eval.generate import stop_ids
    gen.eos_token_id = stop_ids(tokenizer)  # eos and the template's end of turn (<end_of_turn>, <|im_end|>)
    gen.save_pretrained(out)
    tokenizer.save_pretrained(out)
    run_id = (saved.parts.get("tracker") or {}).get("run_id")
    atomic.write_text(out / "delia_export.json", json.dumps(
        {"checkpoint": str(ckpt.resolve()), "step": saved.step, "run_id": run_id, "new_tokens": new_tokens,
         "bytes": total, "shards": len(shards)}, indent=1))
    log.info("exported %s -> %s (%d tensors, %.1f MB in %d file(s))", ckpt, out, len(tensors), total / 1e6, len(shards))


def _causal_lm_class(config) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]
