"""New special tokens: add them, resize embeddings, and initialise their rows.

Under ZeRO-3 the rows must be written before deepspeed.initialize: the optimizer keeps
an fp32 master copy made at initialize, and any later write to the bf16/fp32 partitions
is silently undone by the first step, when the optimizer copies its master weights back.
So this runs on the model before it is wrapped, on every rank, with identical results.
"""
from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)


def add_tokens(tokenizer, new_tokens) -> list[int]:
    """Register new_tokens (config items with .token) as special tokens; returns their ids."""
    tokens = [t.token for t in new_tokens]
    if tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": tokens},
                                     replace_extra_special_tokens=False)
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


@contextlib.contextmanager
def full_param(param: torch.nn.Parameter, modify: bool):
    """The whole tensor of a (possibly ZeRO-3 partitioned) parameter, writable if modify."""
    if hasattr(param, "ds_id"):
        import deepspeed
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0 if modify else None):
            yield param.data
    else:
        yield param.data


def _init_rows(weight: torch.Tensor, old_vocab: int, rows: dict[int, tuple[str, list[int]]],
               std: float, seed: int) -> None:
    mean = weight[:old_vocab].float().mean(0)
    gen = torch.Generator().manual_seed(seed)
    for row, (rule, desc_ids) in rows.items():
        if rule == "mean":
            value = mean
        elif rule == "description":
            value = weight[desc_ids].float().mean(0)
        else:
            value = torch.randn(weight.shape[1], generator=gen) * std
        weight[row] = value.to(weight.dtype)


def rows_of(param) -> int:
    """Full first dimension, also for a ZeRO-3 partitioned parameter (whose .shape is [0])."""
    return int(getattr(param, "ds_shape", param.shape)[0])


def resize_and_init(model, tokenizer, new_tokens, pad_to_multiple_of: int, seed: int = 0) -> dict:
    """Resize to len(tokenizer) (padded) and initialise every new row; returns a report.

    Padding rows beyond the tokenizer get the mean, so they can never be predicted with a
    large logit by accident.
    """
    old_vocab = rows_of(model.get_input_embeddings().weight)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of,
                                  mean_resizing=False)
    new_vocab = rows_of(model.get_input_embeddings().weight)
    rows: dict[int, tuple[str, list[int]]] = {}
    for spec in new_tokens:
        tid = tokenizer.convert_tokens_to_ids(spec.token)
        desc_ids = []
        if spec.init == "description":
            desc_ids = tokenizer(spec.description, add_special_tokens=False)["input_ids"]
            desc_ids = [i for i in desc_ids if i < old_vocab]
            if not desc_ids:
                raise ValueError(f"description of {spec.token!r} has no token from the base vocabulary")
        if tid >= old_vocab:
            rows[tid] = (spec.init, desc_ids)
        else:
            log.info("token %s already in the base vocabulary (id %d); keeping its row", spec.token, tid)
    for row in range(old_vocab, new_vocab):
        rows.setdefault(row, ("mean", []))
    std = getattr(model.config, "initializer_range", 0.02)
    embeddings = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not embeddings[0]:
        embeddings.append(out.weight)
    for i, param in enumerate(embeddings):
        with full_param(param, modify=True) as weight, torch.no_grad():
            _init_rows(weight, old_vocab, rows, std, seed + i)
    return {"old_vocab": old_vocab, "new_vocab": new_vocab,
            "new_token_ids": {s.token: tokenizer.convert_tokens_to_ids(s.token) for s in new_tokens}}
