"""Special-token alignment: how close a new token's representation is to the keywords it
should mean ('<sep>' -> 'json', 'thought'), per layer.

Layer 0 is the input embedding row; layer l > 0 is the hidden state after decoder layer l
at the token's position when the token is fed after BOS (the fixed context). As in
transformers' hidden_states, the last layer's state is taken after the final norm. A keyword of several tokens is
represented by the mean of its tokens (layer 0) or its last token (layers > 0). Every rank
calls this under ZeRO-3 (the forward is collective); only rank 0 logs the result.
"""
from __future__ import annotations

import torch


def _ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{text!r} tokenizes to nothing")
    return ids


@torch.no_grad()
def token_representations(model, tokenizer, text: str, layers: list[int]) -> dict[int, torch.Tensor]:
    from ..model.build import causal_lm
    lm = causal_lm(model)
    ids = _ids(tokenizer, text)
    out: dict[int, torch.Tensor] = {}
    if 0 in layers:
        emb = lm.get_input_embeddings()
        table_ids = torch.tensor(ids, device=next(lm.parameters()).device)
        out[0] = emb(table_ids).float().mean(0).cpu()
    deeper = [l for l in layers if l > 0]
    if deeper:
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        x = torch.tensor([bos + ids], device=next(lm.parameters()).device)
        hidden = lm.model(input_ids=x, output_hidden_states=True, use_cache=False).hidden_states
        for l in deeper:
            if l >= len(hidden):
                raise ValueError(f"eval.alignment.layers asks for layer {l}; the model has {len(hidden) - 1} layers")
            out[l] = hidden[l][0, -1].float().cpu()
    return out


def alignment_metrics(model, tokenizer, keywords: dict[str, list[str]], layers: list[int]) -> dict[str, float]:
    """{'align/<tok>/<kw>/l<L>': euclidean, 'align_cos/<tok>/<kw>/l<L>': cosine}."""
    metrics: dict[str, float] = {}
    for token, words in keywords.items():
        rep = token_representations(model, tokenizer, token, layers)
        for word in words:
            other = token_representations(model, tokenizer, word, layers)
            for l in sorted(rep.keys() & other.keys()):
                a, b = rep[l], other[l]
                metrics[f"align/{token}/{word}/l{l}"] = float(torch.dist(a, b))
                metrics[f"align_cos/{token}/{word}/l{l}"] = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    return metrics
