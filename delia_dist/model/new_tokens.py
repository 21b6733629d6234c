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
    """Register new_tokens (config items with .token) as special tokens; returns their ids.

    Remembers the tokenizer's own size first (`delia_base_vocab`): rows below it are real
    tokens, rows from it on are new tokens or a checkpoint's padding."""
    if not hasattr(tokenizer, "delia_base_vocab"):
        tokenizer.delia_base_vocab = len(tokenizer)
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


def _init_rows(weight: torch.Tensor, base_vocab: int, rows: dict[int, tuple[str, list[int]]],
               std: float, seed: int) -> None:
    mean = weight[:base_vocab].float().mean(0)  # real tokens only, never padding rows
    gen = torch.Generator().manual_seed(seed)
    for row, (rule, desc_ids) in sorted(rows.items()):
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
    """Grow the embeddings to hold len(tokenizer) (padded; never shrunk) and initialise the
    rows of new tokens and of added padding; returns a report.

    The base vocabulary is what the tokenizer used before new tokens (`delia_base_vocab`),
    not the matrix size: checkpoints pad their matrix (Qwen2.5: 151936 rows for 151665
    tokens), so a new token often lands on an existing, untrained padding row and still
    needs its configured init. A checkpoint's other padding rows are left as they are;
    padding rows added here get the real-token mean, so they never win a logit by accident.
    """
    old_rows = rows_of(model.get_input_embeddings().weight)
    base = min(getattr(tokenizer, "delia_base_vocab", len(tokenizer)), old_rows)
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of,
                                      mean_resizing=False)
    new_rows = rows_of(model.get_input_embeddings().weight)
    rows: dict[int, tuple[str, list[int]]] = {}
    for spec in new_tokens:
        tid = tokenizer.convert_tokens_to_ids(spec.token)
        if tid < base:
            log.info("token %s already in the base vocabulary (id %d); keeping its row", spec.token, tid)
            continue
        desc_ids = []
        if spec.init == "description":
            desc_ids = tokenizer(spec.description, add_special_tokens=False)["input_ids"]
            desc_ids = [i for i in desc_ids if i < base]
            if not desc_ids:
                raise ValueError(f"description of {spec.token!r} has no token from the base vocabulary")
        rows[tid] = (spec.init, desc_ids)
        if tid < old_rows:
            log.info("token %s lands on padding row %d of the checkpoint; initialising it (%s)",
                     spec.token, tid, spec.init)
    for row in range(old_rows, new_rows):
        rows.setdefault(row, ("mean", []))
    std = getattr(model.config, "initializer_range", 0.02)
    embeddings = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not embeddings[0]:
        embeddings.append(out.weight)
    for i, param in enumerate(embeddings):
        with full_param(param, modify=True) as weight, torch.no_grad():
            _init_rows(weight, base, rows, std, seed + i)
    return {"base_vocab": base, "old_vocab": old_rows, "new_vocab": new_rows,
            "new_token_ids": {s.token: tokenizer.convert_tokens_to_ids(s.token) for s in new_tokens}}
