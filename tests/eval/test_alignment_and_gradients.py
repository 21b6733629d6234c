"""Special-token alignment and the gradient-buffering diagnostic on the tiny model."""
from __future__ import annotations

import torch

from delia_dist.config import NewTokenConfig
from delia_dist.eval.alignment import alignment_metrics
from delia_dist.eval.gradients import gradient_cosines
from delia_dist.model.new_tokens import add_tokens, resize_and_init


def test_alignment_moves_when_the_new_token_takes_a_keywords_embedding(tiny_tokenizer_dir, tiny_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    add_tokens(tok, [NewTokenConfig(token="<sep>", init="random")])
    resize_and_init(tiny_model, tok, [NewTokenConfig(token="<sep>", init="random")], 64)
    keywords = {"<sep>": ["json", "thought"]}
    before = alignment_metrics(tiny_model, tok, keywords, [0, 1, 2])
    assert {"align/<sep>/json/l0", "align/<sep>/json/l2", "align_cos/<sep>/thought/l1"} <= before.keys()
    json_ids = tok("json", add_special_tokens=False)["input_ids"]
    emb = tiny_model.get_input_embeddings().weight
    with torch.no_grad():
        emb[tok.convert_tokens_to_ids("<sep>")] = emb[json_ids].mean(0)
    after = alignment_metrics(tiny_model, tok, keywords, [0, 1, 2])
    assert before["align/<sep>/json/l0"] > 0.1
    assert after["align/<sep>/json/l0"] < 1e-6 and after["align_cos/<sep>/json/l0"] > 0.999999
    if len(json_ids) == 1:  # one token: the whole forward sees the same input
        assert after["align/<sep>/json/l2"] < 1e-5
    assert after["align/<sep>/thought/l0"] != before["align/<sep>/thought/l0"]


def test_gradient_cosines(tiny_model):
    torch.manual_seed(0)
    v = tiny_model.config.vocab_size

    def batch(seed):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, v, (2, 16), generator=g)
        return {"input_ids": ids, "labels": torch.roll(ids, -1, 1), "position_ids": torch.arange(16).expand(2, 16)}

    same = gradient_cosines(tiny_model, batch(1), batch(1))
    assert abs(same["grad_cos/diverse_vs_downstream"] - 1.0) < 1e-5
    diff = gradient_cosines(tiny_model, batch(1), batch(2))
    assert -1.0 <= diff["grad_cos/diverse_vs_downstream"] < 0.99
    assert 0.0 < diff["grad_cos/downstream_vs_mixed"] < 1.0


def test_alignment_layer_beyond_the_model_is_an_error(tiny_tokenizer, tiny_model):
    import pytest
    with pytest.raises(ValueError, match="asks for layer 3; the model has 2 layers"):
        alignment_metrics(tiny_model, tiny_tokenizer, {"json": ["thought"]}, [0, 3])


def test_buffering_diagnostic_on_batches_from_training_shards(tmp_path, tiny_tokenizer, tiny_model):
    """The batches are what the trainer would see from each source alone; the diagnostic
    runs on them and the downstream batch really is downstream data."""
    from delia_dist.config import DataConfig, SourceConfig
    from delia_dist.data import ShardWriter, synth
    from delia_dist.eval.runner import source_batch

    def shards(name, records):
        with ShardWriter(tmp_path / name, tiny_tokenizer) as w:
            for r in records:
                w.write(r)
        return str(tmp_path / name / "manifest.json")

    data = DataConfig(sources=[
        SourceConfig(name="div", shards=shards("div", synth.diverse_records(60, 1)), weight=0.8, kind="diverse"),
        SourceConfig(name="task", shards=shards("task", synth.translation_records(40, 2)), weight=0.2,
                     kind="downstream")], seq_len=128, shuffle_buffer=8, pack_buffer=8)
    div, down = source_batch(data, tiny_tokenizer, "diverse", 2), source_batch(data, tiny_tokenizer, "downstream", 2)
    assert div["input_ids"].shape == down["input_ids"].shape == (2, 128)
    assert "Fenish" in tiny_tokenizer.decode(down["input_ids"][0]) \
        and "Fenish" not in tiny_tokenizer.decode(div["input_ids"][0])
    cos = gradient_cosines(tiny_model, div, down)
    assert -1 < cos["grad_cos/diverse_vs_downstream"] < 1 and 0 < cos["grad_cos/downstream_vs_mixed"] < 1
    import pytest
    with pytest.raises(ValueError, match="needs a data source of kind 'downstream'"):
        source_batch(DataConfig(sources=data.sources[:1]), tiny_tokenizer, "downstream", 2)
