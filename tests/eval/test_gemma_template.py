"""A gemma-style chat template (no system role: it raises; turns end with <end_of_turn>, not
eos) through sampling prompts, training records and generation, with a tiny model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from delia_dist.data.chat import end_of_turn_ids, fit_messages
from delia_dist.data.records import tokenize_messages

SYSTEM = "You are a helpful AI assistant."


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    from delia_dist.model.tiny import train_tokenizer
    path = tmp_path_factory.mktemp("gemma-tok")
    train_tokenizer(path, style="gemma")
    return path


@pytest.fixture(scope="module")
def gemma_tok(gemma_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gemma_dir)


def test_template_refuses_a_system_turn_and_fit_messages_folds_it(gemma_tok):
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "name a colour"}]
    with pytest.raises(Exception, match="System role not supported"):
        gemma_tok.apply_chat_template(chat, tokenize=False)
    text = gemma_tok.apply_chat_template(fit_messages(gemma_tok, chat), tokenize=False, add_generation_prompt=True)
    assert text == f"<bos><start_of_turn>user\n{SYSTEM}\n\nname a colour<end_of_turn>\n<start_of_turn>model\n"


def test_self_sampling_chat_renders_for_gemma(gemma_tok):
    """The reference recipe's [system, user, assistant reference, user] chat."""
    from delia_dist.gen.sample import chat_for
    chat = fit_messages(gemma_tok, chat_for({"query": "why is the sky blue", "reference": "air scatters"}, SYSTEM))
    assert [m["role"] for m in chat] == ["user", "assistant", "user"]
    text = gemma_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert SYSTEM in text and text.endswith("<start_of_turn>model\n")


def test_end_of_turn_tokens(gemma_tok, tiny_tokenizer):
    assert end_of_turn_ids(gemma_tok) == [gemma_tok.convert_tokens_to_ids("<end_of_turn>")]
    assert end_of_turn_ids(tiny_tokenizer) == [tiny_tokenizer.convert_tokens_to_ids("<|end|>")]


def test_training_record_with_system_masks_the_reply_and_its_end_of_turn(gemma_tok):
    ids, mask = tokenize_messages(gemma_tok, [{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": "translate hann er"},
                                              {"role": "assistant", "content": "he is"}])
    assert gemma_tok.decode(ids[mask == 1]) == "he is<end_of_turn>"
    assert SYSTEM in gemma_tok.decode(ids)


def test_generation_stops_at_end_of_turn(tmp_path, gemma_dir, gemma_tok):
    """A tiny model that memorised a two-turn gemma conversation, saved with eos only in its
    generation config: asked the first turn, it answers the first reply and stops there
    instead of running on into the next turn."""
    from delia_dist.eval.generate import generate
    from delia_dist.model.tiny import build_model, llama_config
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "translate hann er"}]
    convo = first + [{"role": "assistant", "content": "he is"}, {"role": "user", "content": "translate hún er"},
                     {"role": "assistant", "content": "she is"}]
    ids, _ = tokenize_messages(gemma_tok, convo)
    seq = torch.tensor(np.asarray(ids, dtype=np.int64))[None]
    torch.manual_seed(0)
    model = build_model(llama_config(vocab_size=len(gemma_tok)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(input_ids=seq, labels=seq).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.generation_config.eos_token_id = gemma_tok.eos_token_id
    model.generation_config.pad_token_id = gemma_tok.pad_token_id
    model.save_pretrained(tmp_path / "hf")
    gemma_tok.save_pretrained(tmp_path / "hf")
    assert generate(str(tmp_path / "hf"), [first], max_new_tokens=24, backend="transformers") == ["he is"]
