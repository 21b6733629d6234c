"""BLEURT loader: a checkpoint in the lucadiliello/BLEURT-20 layout scores exactly what a
hand-written BERT forward of the same weights gives, in batches or one by one."""
from __future__ import annotations

import json
import math

import pytest
import torch

from delia_dist.errors import UserError
from delia_dist.eval.bleurt import Bleurt, bleurt_scores

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the cat dog sat on a mat big red house".split()
H, E, HEADS, FF = 16, 8, 2, 32


def _write_checkpoint(path, with_projection=True):
    g = torch.Generator().manual_seed(0)
    e = E if with_projection else H

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    p = "bleurt."
    state = {p + "embeddings.word_embeddings.weight": w(len(WORDS), e),
             p + "embeddings.position_embeddings.weight": w(32, e),
             p + "embeddings.token_type_embeddings.weight": w(2, e),
             p + "embeddings.LayerNorm.weight": 1 + w(e), p + "embeddings.LayerNorm.bias": w(e),
             p + "embeddings.position_ids": torch.arange(32)[None]}
    if with_projection:
        state |= {p + "encoder.embedding_projection.weight": w(H, E), p + "encoder.embedding_projection.bias": w(H)}
    q = p + "encoder.layer.0."
    for name, (o, i) in {"attention.self.query": (H, H), "attention.self.key": (H, H), "attention.self.value": (H, H),
                         "attention.output.dense": (H, H), "intermediate.dense": (FF, H),
                         "output.dense": (H, FF)}.items():
        state |= {q + name + ".weight": w(o, i), q + name + ".bias": w(o)}
    for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
        state |= {q + ln + ".weight": 1 + w(H), q + ln + ".bias": w(H)}
    state |= {p + "pooler.dense.weight": w(H, H), p + "pooler.dense.bias": w(H),
              "classifier.weight": w(1, H), "classifier.bias": w(1)}
    path.mkdir()
    from safetensors.torch import save_file
    save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({
        "model_type": "bleurt", "vocab_size": len(WORDS), "hidden_size": H, "num_hidden_layers": 1,
        "num_attention_heads": HEADS, "intermediate_size": FF, "hidden_act": "gelu", "max_position_embeddings": 32,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "embedding_size": E if with_projection else None}))
    (path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    return state


def _reference_forward(s, ids, types):
    """BLEURT = post-LN BERT on [CLS] ref [SEP] cand [SEP], tanh pooler on [CLS], linear head."""
    F = torch.nn.functional
    p, q = "bleurt.", "bleurt.encoder.layer.0."

    def lin(x, name):
        return x @ s[name + ".weight"].T + s[name + ".bias"]

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], s[name + ".weight"], s[name + ".bias"], 1e-12)

    x = s[p + "embeddings.word_embeddings.weight"][ids] + s[p + "embeddings.token_type_embeddings.weight"][types] \
        + s[p + "embeddings.position_embeddings.weight"][torch.arange(len(ids))]
    x = ln(x, p + "embeddings.LayerNorm")
    if p + "encoder.embedding_projection.weight" in s:
        x = lin(x, p + "encoder.embedding_projection")
    d = H // HEADS
    heads = [lin(x, q + f"attention.self.{n}").view(len(ids), HEADS, d).transpose(0, 1)
             for n in ("query", "key", "value")]
    att = torch.softmax(heads[0] @ heads[1].transpose(1, 2) / math.sqrt(d), -1) @ heads[2]
    x = ln(lin(att.transpose(0, 1).reshape(len(ids), H), q + "attention.output.dense") + x,
           q + "attention.output.LayerNorm")
    x = ln(lin(F.gelu(lin(x, q + "intermediate.dense")), q + "output.dense") + x, q + "output.LayerNorm")
    return float(lin(torch.tanh(lin(x[0], p + "pooler.dense")), "classifier")[0])


@pytest.mark.parametrize("with_projection", [True, False])
def test_bleurt_matches_a_hand_written_forward(tmp_path, with_projection):
    state = _write_checkpoint(tmp_path / "bleurt", with_projection)
    refs = ["the cat sat on a mat", "a big red house", "the dog"]
    hyps = ["the dog sat", "a red house big the cat on a mat", "the dog"]
    scorer = Bleurt(tmp_path / "bleurt")
    batched = scorer.score(refs, hyps, batch_size=3)   # padded to the longest pair
    for r, h, got in zip(refs, hyps, batched):
        ids = [2] + [WORDS.index(t) for t in r.split()] + [3]
        types = [0] * len(ids) + [1] * (len(h.split()) + 1)
        ids += [WORDS.index(t) for t in h.split()] + [3]
        assert got == pytest.approx(_reference_forward(state, torch.tensor(ids), torch.tensor(types)), abs=1e-5)
    assert bleurt_scores(str(tmp_path / "bleurt"), hyps, refs, batch_size=1) == pytest.approx(batched, abs=1e-5)


def test_bleurt_rejects_what_it_cannot_load_faithfully(tmp_path):
    state = _write_checkpoint(tmp_path / "b")
    from safetensors.torch import save_file
    del state["bleurt.pooler.dense.bias"]
    save_file(state, str(tmp_path / "b/model.safetensors"))
    with pytest.raises(UserError, match=r"missing \['pooler.dense.bias'\]"):
        Bleurt(tmp_path / "b")
    cfg = json.loads((tmp_path / "b/config.json").read_text())
    (tmp_path / "b/config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(UserError, match="expected 'bleurt'"):
        Bleurt(tmp_path / "b")
    with pytest.raises(UserError, match="no config.json"):
        Bleurt(tmp_path / "nowhere")
