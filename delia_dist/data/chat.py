"""What a model's chat template allows, asked of the template itself: whether it takes a
system turn (gemma's raises "System role not supported"), and which token ends a turn when
that is not eos (gemma's <end_of_turn>, Llama 3's <|eot_id|>, ChatML's <|im_end|>).

Sampling, training records and evaluation prompts all go through `fit_messages`, so one
rule decides what a system-less template gets: the system text leads the first user turn,
as gemma's own documentation does it.
"""
from __future__ import annotations


def takes_system(tokenizer) -> bool:
    """Whether the chat template renders a system turn (cached on the tokenizer)."""
    cached = getattr(tokenizer, "delia_takes_system", None)
    if cached is None:
        try:
            text = tokenizer.apply_chat_template([{"role": "system", "content": "S1S"},
                                                  {"role": "user", "content": "U1U"}], tokenize=False)
            cached = "S1S" in text
        except Exception:  # jinja's TemplateError from raise_exception(), or the template's own
            cached = False
        tokenizer.delia_takes_system = cached
    return cached


def fit_messages(tokenizer, messages: list[dict]) -> list[dict]:
    """`messages` as the template accepts them: a leading system turn is folded into the first
    user turn when the template has no system role; otherwise unchanged."""
    if not messages or messages[0].get("role") != "system" or takes_system(tokenizer):
        return messages
    system, rest = messages[0]["content"], list(messages[1:])
    if rest and rest[0].get("role") == "user":
        rest[0] = {**rest[0], "content": f"{system}\n\n{rest[0]['content']}" if system else rest[0]["content"]}
    elif system:
        rest.insert(0, {"role": "user", "content": system})
    return rest


def special_ids(tokenizer) -> set[int]:
    """bos/eos/pad and every added token marked special: gemma's <end_of_turn> is the latter
    only when a tokenizer does not also list it among additional_special_tokens."""
    return set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def end_of_turn_ids(tokenizer) -> list[int]:
    """Special tokens the template writes right after an assistant reply (besides eos): what
    generation must stop at. Empty when the template ends replies with eos or plain text."""
    messages = [{"role": "user", "content": "U1U"}, {"role": "assistant", "content": "A1A"}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:
        return []
    after = text[text.rfind("A1A") + 3:]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = special_ids(tokenizer)
    out = []
    for i in ids:
        if i not in special:
            if tokenizer.decode([i]).strip():
                break
            continue
        if i != tokenizer.eos_token_id and i not in out:
            out.append(i)
        break
    return out
