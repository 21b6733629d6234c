"""Tiny, hub-free model parts: a BPE tokenizer trained in a second, a chat template and a
small Llama config. The tests, the CPU main job and the benchmarks all build from these,
so no step anywhere needs a download.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Turns end with <|end|>; the assistant text is wrapped in {% generation %} so
# apply_chat_template(return_assistant_tokens_mask=True) marks the loss tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|>\n{% generation %}{{ m['content'] }}<|end|>{% endgeneration %}\n"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# gemma's template, as gemma-7b-it ships it: no system role (it raises), the assistant is
# "model", turns end with <end_of_turn> (not eos), no {% generation %} blocks.
GEMMA_SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

_WORDS = ("the a an of to in is was for on that with as by at from this be it are or his her "
          "translate english icelandic answer question json thought hallucination yes no format "
          "please explain why how what when where model data learn task sentence text word "
          "good bad true false user assistant system response query relatives knowledge fact "
          "ég er þú hann hún það við þið þeir og að í á með fyrir um til frá").split()


def synthetic_corpus(n_lines: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 24))) for _ in range(n_lines)]


def train_tokenizer(out_dir: str | Path, texts: Iterable[str] | None = None, vocab_size: int = 512,
                    style: str = "delia"):
    """Train a byte-level BPE and save it as a transformers tokenizer directory; style
    "gemma" gives it gemma's special tokens and chat template (no system role)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    gemma = style == "gemma"
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=GEMMA_SPECIAL_TOKENS if gemma else SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) if texts is not None else synthetic_corpus(), trainer=trainer)
    if gemma:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                       pad_token="<|pad|>")
    fast.chat_template = GEMMA_CHAT_TEMPLATE if gemma else CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def llama_config(vocab_size: int, **overrides) -> dict:
    """A ~0.3M-parameter Llama; head_dim 32 because vLLM's CPU attention needs >= 32."""
    cfg = dict(model_type="llama", vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
               max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
               attention_dropout=0.0)
    cfg.update(overrides)
    return cfg


def build_model(config: dict, seed: int = 0):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(config)
    model_type = kwargs.pop("model_type")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kwargs))
