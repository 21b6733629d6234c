"""Checkpoint -> Hugging Face model directory (safetensors, config, tokenizer with the new
tokens), loadable by transformers and vLLM. Runs in one plain process: DeepSpeed's
zero_to_fp32 merges the per-rank shards, so no GPU and no process group are needed."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .checkpoint import is_complete
from .config import config_from_dict

log = logging.getLogger(__name__)
WRAPPER_PREFIX = "model."  # CausalLMWithLoss holds the HF model as .model


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: str = "auto") -> Path:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .model import DTYPES, apply_lora

    ckpt, out = Path(ckpt), Path(out)
    if ckpt.is_dir() and (ckpt / "latest").is_file() and not is_complete(ckpt):
        ckpt = ckpt / (ckpt / "latest").read_text().strip()
    if not is_complete(ckpt):
        raise FileNotFoundError(f"{ckpt} is not a complete delia checkpoint (no COMPLETE marker)")
    shared = json.loads((ckpt / "trainer_state.json").read_text())
    cfg = config_from_dict(shared["config"])
    tokenizer = AutoTokenizer.from_pretrained(ckpt / "tokenizer")
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    state = {k[len(WRAPPER_PREFIX):] if k.startswith(WRAPPER_PREFIX) else k: v for k, v in state.items()}
    vocab = shared["new_tokens"]["new_vocab"]
    if cfg.model.name_or_path:
        config = AutoConfig.from_pretrained(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    else:
        raw = dict(cfg.model.config)
        config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    config.vocab_size = vocab
    torch_dtype = DTYPES.get(dtype if dtype != "auto" else cfg.model.dtype, torch.float32)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if cfg.model.finetune == "lora":
        model = apply_lora(model, cfg.model.lora)
        model.load_state_dict(state, strict=True)
        model = model.merge_and_unload()
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"checkpoint does not match the model: missing {sorted(missing)[:5]}, "
                               f"unexpected {sorted(unexpected)[:5]}")
        if tied:
            model.tie_weights()
    model.config.use_cache = True
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [i for i in {tokenizer.eos_token_id,
                                                        tokenizer.convert_tokens_to_ids("<|end|>")}
                                            if isinstance(i, int) and i != tokenizer.unk_token_id]
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch_dtype).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "delia_export.json").write_text(json.dumps(
        {"checkpoint": str(ckpt.resolve()), "step": shared["step"], "run_id": (shared.get("tracker") or {}).get("run_id"),
         "new_tokens": shared["new_tokens"]}, indent=1))
    log.info("exported %s -> %s", ckpt, out)
    return out
