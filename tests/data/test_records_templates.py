"""Completion-only masks on real chat templates: SmolLM2's own tokenizer and template, and
Llama-3 / Qwen-2.5 style templates on it; assistant tokens (with the end-of-turn token,
without the newline after it) and only they carry loss."""
from __future__ import annotations

import json

import numpy as np
import pytest

from delia_dist.cli import main
from delia_dist.data.errors import RecordError
from delia_dist.data.records import tokenize_messages

CONVERSATION = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Spain? Answer in one word."},
    {"role": "assistant", "content": "Madrid"},
]

LLAMA3 = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim "
    "+ '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def smol_tok(smollm2_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smollm2_dir)


def _variant(smollm2_dir, template, specials=()):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    if specials:
        tok.add_special_tokens({"additional_special_tokens": list(specials)},
                               replace_extra_special_tokens=False)
    tok.chat_template = template
    return tok


def _replies(tok, messages):
    ids, mask = tokenize_messages(tok, messages)
    full = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert ids.tolist() == list(full), "the mask path must give the template's own ids"
    return ids, mask


def test_real_smollm2_template_masks_replies_and_end_of_turn(smol_tok):
    assert "add_generation_prompt" in smol_tok.chat_template and "{% generation" not in smol_tok.chat_template
    ids, mask = _replies(smol_tok, CONVERSATION)
    assert smol_tok.decode(ids[mask == 1]) == "The capital of France is Paris.<|im_end|>Madrid<|im_end|>"
    # each masked run ends on <|im_end|> (the model learns to stop) and the "\n" after it is not learnt
    im_end = smol_tok.convert_tokens_to_ids("<|im_end|>")
    runs = np.split(np.flatnonzero(mask), np.flatnonzero(np.diff(np.flatnonzero(mask)) > 1) + 1)
    assert len(runs) == 2 and all(ids[r[-1]] == im_end and mask[r[-1] + 1] == 0 for r in runs)


def test_generation_block_template_gives_the_same_mask(smollm2_dir, smol_tok):
    marked = smol_tok.chat_template.replace(
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
        "{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{'\n'}}"
        "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}")
    assert marked != smol_tok.chat_template
    tok = _variant(smollm2_dir, marked)
    ids, mask = tokenize_messages(tok, CONVERSATION)
    ref_ids, ref_mask = _replies(smol_tok, CONVERSATION)
    assert ids.tolist() == ref_ids.tolist() and mask.tolist() == ref_mask.tolist()


@pytest.mark.parametrize("name", ["llama3", "qwen25"])
def test_llama3_and_qwen_style_templates(smollm2_dir, name):
    if name == "llama3":
        tok = _variant(smollm2_dir, LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>",
                                             "<|end_header_id|>", "<|eot_id|>"])
        tok.bos_token, eot = "<|begin_of_text|>", "<|eot_id|>"
    else:
        tok, eot = _variant(smollm2_dir, QWEN25), "<|im_end|>"
    convo = [{"role": "system", "content": "Be brief."}] + CONVERSATION
    ids, mask = _replies(tok, convo)
    assert tok.decode(ids[mask == 1]) == f"The capital of France is Paris.{eot}Madrid{eot}"


def test_template_that_is_not_prefix_stable_is_a_record_error(smollm2_dir):
    tok = _variant(smollm2_dir, "turns={{ messages|length }}\n" + QWEN25)
    with pytest.raises(RecordError, match="generation"):
        tokenize_messages(tok, CONVERSATION)


def test_data_shard_on_the_real_tokenizer(tmp_path, smollm2_dir, capsys):
    src = tmp_path / "chat.jsonl"
    src.write_text("".join(json.dumps({"messages": CONVERSATION}) + "\n" for _ in range(3)))
    out = tmp_path / "out"
    assert main(["data", "shard", str(src), "--out", str(out), "--tokenizer", str(smollm2_dir),
                 "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["samples"] == 3 and m["loss_tokens"] > 3 * 10
    capsys.readouterr()
    # a template that marks nothing: a clear error naming the file and its sample count
    tok_dir = tmp_path / "blind"
    blind = _variant(smollm2_dir, "{% for m in messages %}{% generation %}{% endgeneration %}"
                                  "{{ m['content'] }}\n{% endfor %}")
    blind.save_pretrained(tok_dir)
    bad = tmp_path / "bad"
    assert main(["data", "shard", str(src), "--out", str(bad), "--tokenizer", str(tok_dir),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{src} (3 samples)" in err and "no loss token" in err
    assert not (bad / "manifest.json").exists() and not list(bad.glob("*.tar"))


def test_writer_refuses_a_set_without_loss_tokens(tmp_path, smollm2_dir):
    from delia_dist.data import ShardWriter
    from delia_dist.data.errors import DataError
    blind = _variant(smollm2_dir, "{% for m in messages %}{% generation %}{% endgeneration %}"
                                  "{{ m['content'] }}\n{% endfor %}")
    with pytest.raises(DataError, match="none of the 2 samples"), ShardWriter(tmp_path, blind) as w:
        for _ in range(2):
            w.write({"messages": CONVERSATION})
    assert not list(tmp_path.iterdir())
