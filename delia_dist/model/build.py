"""Build the tokenizer and model for training: hub/local weights or a config, new special
tokens, LoRA or full fine-tuning, under ZeRO-3 so a 70B model never exists whole on a rank.
"""
from __future__ import annotations

import logging
import warnings

import torch

from .new_tokens import add_tokens, resize_and_init

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# transformers reads ZeRO-3 settings from a live HfDeepSpeedConfig object while it
# builds a model (zero.Init around from_pretrained/from_config, gathered resize).
_HF_DS_CONFIG = None


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer
    path = model_cfg.tokenizer or model_cfg.name_or_path
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.delia_base_vocab = len(tok)  # a model built from a config gets this vocabulary
    add_tokens(tok, model_cfg.new_tokens)
    return tok


def model_dtype(model_cfg, precision: str) -> torch.dtype:
    return DTYPES.get(model_cfg.dtype, PRECISION_DTYPES[precision])


def build_model(model_cfg, tokenizer, ds_config: dict | None, precision: str, seed: int = 0):
    """Returns (model, report). ds_config with ZeRO stage 3 partitions weights as they load."""
    global _HF_DS_CONFIG
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    if ds_config is not None and ds_config["zero_optimization"]["stage"] == 3:
        _HF_DS_CONFIG = HfDeepSpeedConfig(ds_config)
    dtype = model_dtype(model_cfg, precision)
    kwargs = {"dtype": dtype}
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    torch.manual_seed(seed)
    if model_cfg.name_or_path:
        model = AutoModelForCausalLM.from_pretrained(
            model_cfg.name_or_path, trust_remote_code=model_cfg.trust_remote_code, **kwargs)
    else:
        cfg = dict(model_cfg.config)
        cfg.setdefault("vocab_size", getattr(tokenizer, "delia_base_vocab", len(tokenizer)))
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.config.use_cache = False
    report = resize_and_init(model, tokenizer, model_cfg.new_tokens,
                             model_cfg.pad_vocab_to_multiple_of, seed=seed)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if model_cfg.finetune == "lora":
        model = apply_lora(model, model_cfg.lora)
    return model, report


def save_initialised(model_cfg, out_dir, precision: str, seed: int):
    """The untrained model with its new tokens added and initialised as a run's step 0 has
    them (same rule, same seed), saved as an HF directory: what the `base` row scores, so
    it measures the token, not the string "<sep>" split into pieces."""
    import dataclasses
    tok = load_tokenizer(model_cfg)
    model, _ = build_model(dataclasses.replace(model_cfg, finetune="full", gradient_checkpointing=False), tok,
                           None, precision, seed=seed)
    model.config.use_cache = True
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def is_tied(model) -> bool:
    """Input embedding and output head are one Parameter (SmolLM2, Llama 3.2 1B/3B, Qwen 0.5B)."""
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def apply_lora(model, lora_cfg):
    """LoRA adapters on the target projections; with train_embeddings the embedding and
    output head are trained in full (the DELIA recipe), which new tokens need to learn.

    A tied model keeps one trained matrix: only embed_tokens is copied for training and
    PEFT's ensure_weight_tying points the output head at that same copy, so a new row
    (<sep>) is learnt once and the export stays tied. Training two copies would return
    an untied checkpoint whose input and output rows disagree. The export rebuilds the
    model through this function, so this is the one place that decides."""
    from peft import LoraConfig, get_peft_model

    modules_to_save, tie = None, False
    if lora_cfg.train_embeddings:
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        tie = is_tied(model)
        wanted = ("embed_tokens",) if tie else ("embed_tokens", "lm_head")
        modules_to_save = [n for n in wanted if n in names]
    peft_cfg = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                          target_modules=list(lora_cfg.target_modules), modules_to_save=modules_to_save,
                          task_type="CAUSAL_LM", ensure_weight_tying=tie)
    if "embed_tokens" in lora_cfg.target_modules and is_tied(model):
        log.info("LoRA adapter on a tied embedding: the head stays the frozen base matrix in training; "
                 "the export merges the adapter into the shared matrix, so the exported head follows it")
    with warnings.catch_warnings():  # PEFT's tied-adapter warning: the line above says what happens
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings=True.*")
        peft_model = get_peft_model(model, peft_cfg)
    _register_embedding_adapters(peft_model)
    if tie and output_head(peft_model).weight is not _trained_embedding(peft_model).weight:
        raise RuntimeError("PEFT did not tie the trained output head to the trained embedding")
    return peft_model


def _register_embedding_adapters(model) -> None:
    """PEFT's embedding adapter reads lora_embedding_A/B straight from ParameterDicts whose own
    forward never runs, so ZeRO-3 would never gather them ("'weight' must be 2-D"): declare
    them parameters of the embedding's forward. Without ZeRO-3 the declaration is inert."""
    from deepspeed.runtime.zero.partition_parameters import register_external_parameter
    for module in model.modules():
        for table in (getattr(module, "lora_embedding_A", None), getattr(module, "lora_embedding_B", None)):
            if isinstance(table, torch.nn.ParameterDict):
                for param in table.values():
                    register_external_parameter(module, param)


def _trained_embedding(model) -> torch.nn.Module:
    emb = causal_lm(model).get_input_embeddings()
    if hasattr(emb, "modules_to_save"):
        return emb.modules_to_save[emb.active_adapters[0]]
    return emb


def causal_lm(model):
    """The HF *ForCausalLM inside a PEFT wrapper (or the model itself)."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def output_head(model) -> torch.nn.Module:
    """The module whose weight maps hidden states to logits (PEFT's trained copy if any)."""
    head = causal_lm(model).get_output_embeddings()
    if hasattr(head, "modules_to_save"):  # peft ModulesToSaveWrapper
        active = head.active_adapters[0] if hasattr(head, "active_adapters") else head.active_adapter
        return head.modules_to_save[active]
    return head
