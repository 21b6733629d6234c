"""Records -> token ids and loss mask.

Accepted record shapes (each line of a JSONL input):
  chat        {"messages": [{"role", "content"}, ...]}
  downstream  {"instruction", "fields"?, "response", "system"?}  (instruction may hold {field})
  alpaca      {"instruction", "input"?, "output", "system"?}
  completion  {"prompt", "response" | "completion", "system"?}
All are rendered with the tokenizer's chat template; the loss mask marks assistant tokens
only (completion-only loss). A tokenizer fingerprint lets a reader decide whether stored
ids are still valid for the training tokenizer.
"""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np

from .errors import RecordError

ROLES = ("system", "user", "assistant", "tool")

# A real {% generation %} block; a bare substring test also matches `add_generation_prompt`,
# which nearly every chat template contains.
_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def is_downstream(record: dict) -> bool:
    return "instruction" in record and "messages" not in record


def render_instruction(instruction: str, fields: dict) -> str:
    """Fill {name} placeholders with plain replace: instructions may hold JSON braces."""
    for name, value in fields.items():
        instruction = instruction.replace("{" + name + "}", str(value))
    return instruction


def _string(record: dict, key: str, shape: str, optional: bool = False):
    value = record.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        what = "missing" if key not in record else f"a {type(value).__name__}, not a string"
        raise RecordError("bad_record", f"{shape} record: key '{key}' is {what}")
    return value


def _chat(msgs) -> list[dict]:
    if not isinstance(msgs, list) or not msgs:
        raise RecordError("bad_record", "'messages' must be a non-empty list")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise RecordError("bad_record", f"messages[{i}] needs string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise RecordError("bad_record", f"messages[{i}].role {m['role']!r} not one of {ROLES}")
    if not any(m["role"] == "assistant" for m in msgs):
        raise RecordError("no_assistant", "no assistant message: nothing to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def _turn(system, user: str, reply: str) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def to_messages(record, instruction: str | None = None) -> list[dict]:
    """Validate a record of any accepted shape and return its chat messages; `instruction`
    overrides an instruction record's template (a drawn paraphrase). Raises RecordError
    naming the missing or bad key."""
    if not isinstance(record, dict):
        raise RecordError("bad_record", f"record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return _chat(record["messages"])
    if "instruction" in record:
        if "response" in record or "output" not in record:
            shape, reply_key = "downstream", "response"
        else:
            shape, reply_key = "alpaca", "output"
        text = _string(record, "instruction", shape) if instruction is None else instruction
        reply = _string(record, reply_key, shape + (" (or alpaca: 'output')" if shape == "downstream" else ""))
        system = _string(record, "system", shape, optional=True)
        if shape == "downstream":
            fields = record.get("fields", {})
            if not isinstance(fields, dict):
                raise RecordError("bad_record", "downstream record: key 'fields' must be an object")
            text = render_instruction(text, fields)
        else:
            extra = _string(record, "input", shape, optional=True)
            if extra:
                text = f"{text}\n\n{extra}"
        return _turn(system, text, reply)
    if "prompt" in record:
        reply_key = "completion" if "completion" in record and "response" not in record else "response"
        prompt = _string(record, "prompt", "prompt/response")
        reply = _string(record, reply_key, "prompt/response (or 'completion')")
        return _turn(_string(record, "system", "prompt/response", optional=True), prompt, reply)
    raise RecordError("bad_record", "record has none of the keys 'messages', 'instruction', 'prompt' "
                                    f"(it has {sorted(record)[:8]})")


def tokenize_messages(tokenizer, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """ids (int32) and loss mask (uint8, 1 on assistant tokens) for one conversation.

    A template with {% generation %} blocks marks the loss tokens itself. Any other
    (SmolLM2's, Llama 3's, Qwen 2.5's) gets them from render differences: assistant
    message i spans from the end of the render of messages[:i] with the generation prompt
    to the end of the render of messages[:i + 1]. The span keeps the end-of-turn token the
    model must learn to emit (<|im_end|>, <|eot_id|>), but not the whitespace a template
    writes after it, which generation never produces because it stops at that token."""
    from .chat import fit_messages, special_ids
    messages = fit_messages(tokenizer, messages)  # a system turn, for a template without one
    template = tokenizer.chat_template or ""
    if _GENERATION_BLOCK.search(template):
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        return (np.asarray(out["input_ids"], dtype=np.int32),
                np.asarray(out["assistant_masks"], dtype=np.uint8))
    text = _render(tokenizer, messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True) if i else ""
        upto = _render(tokenizer, messages[:i + 1], False)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise RecordError("template_not_prefix_stable",
                              f"the chat template renders messages[:{i + 1}] differently inside the "
                              "whole conversation; add {% generation %} blocks to it to mark replies")
        spans.append((len(before), len(upto)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    starts = np.asarray([s for s, _ in enc["offset_mapping"]], dtype=np.int64)
    ends = np.asarray([max(e, s + 1) for s, e in enc["offset_mapping"]], dtype=np.int64)
    mask = np.zeros(len(ids), dtype=np.uint8)
    special = special_ids(tokenizer)
    for lo, hi in spans:
        idx = np.flatnonzero((ends > lo) & (starts < hi))
        idx = _trim_after_end_of_turn(tokenizer, ids, idx, special)
        mask[idx] = 1
    return ids, mask


def _trim_after_end_of_turn(tokenizer, ids, idx, special):
    """Drop whitespace-only tokens that follow the span's last special token."""
    last = max((k for k, j in enumerate(idx) if int(ids[j]) in special), default=None)
    if last is None or last == len(idx) - 1:
        return idx
    if tokenizer.decode(ids[idx[last + 1:]]).strip():
        return idx
    return idx[:last + 1]


def _render(tokenizer, messages, add_generation_prompt) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def fingerprint(tokenizer, upto: int | None = None) -> str:
    """Hash of everything that decides the ids: vocabulary (ids < upto), chat template and
    bos/eos. `upto` lets a reader ask "same tokenizer apart from tokens added later?"."""
    vocab = sorted((i, t) for t, i in tokenizer.get_vocab().items() if upto is None or i < upto)
    payload = {"vocab": vocab, "template": tokenizer.chat_template or "",
               "bos": tokenizer.bos_token, "eos": tokenizer.eos_token}
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:32]


def tokenizer_info(tokenizer) -> dict:
    return {"fingerprint": fingerprint(tokenizer), "vocab_size": len(tokenizer),
            "name_or_path": str(getattr(tokenizer, "name_or_path", ""))}
