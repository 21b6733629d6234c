"""The buffering diagnostic the DELIA paper leaves open: do diverse-data gradients cancel
among themselves while reshaping the downstream gradient?

Returns the cosine similarity between the gradient of a diverse batch and of a downstream
batch, and between the downstream gradient alone and with diverse data mixed in.
"""
from __future__ import annotations

import torch

from kernels import linear_cross_entropy


def _loss(model, batch) -> torch.Tensor:
    from ..model.build import causal_lm, output_head
    lm = causal_lm(model)
    hidden = lm.model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"),
                      use_cache=False).last_hidden_state
    head = output_head(model)
    return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight, batch["labels"].reshape(-1),
                                bias=head.bias, reduction="mean", impl="chunked")


def flat_grad(model, batch) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(_loss(model, batch), params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params)]).double()


def _cat(a: dict, b: dict) -> dict:
    return {k: torch.cat([a[k], b[k]]) for k in a.keys() & b.keys()}


def gradient_cosines(model, diverse_batch: dict, downstream_batch: dict) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity
    g_div = flat_grad(model, diverse_batch)
    g_down = flat_grad(model, downstream_batch)
    g_mix = flat_grad(model, _cat(diverse_batch, downstream_batch))
    return {"grad_cos/diverse_vs_downstream": float(cos(g_div, g_down, dim=0)),
            "grad_cos/downstream_vs_mixed": float(cos(g_down, g_mix, dim=0)),
            "grad_norm/diverse": float(g_div.norm()), "grad_norm/downstream": float(g_down.norm())}
