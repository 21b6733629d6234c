"""Records -> token ids and loss mask.

Two record shapes arrive: chat records {"messages": [...]} and
downstream task records {"instruction", "fields", "response", "system"?}. Both are
rendered with the tokenizer's chat template; the loss mask marks assistant tokens only
(completion-only loss). A tokenizer fingerprint lets a reader decide whether stored ids
are still valid for the training tokenizer.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from .errors import RecordError

ROLES = ("system", "user", "assistant", "tool")


def is_downstream(record: dict) -> bool:
    return "instruction" in record and "messages" not in record


def render_instruction(instruction: str, fields: dict) -> str:
    """Fill {name} placeholders with plain replace: instructions may hold JSON braces."""
    for name, value in fields.items():
        instruction = instruction.replace("{" + name + "}", str(value))
    return instruction


def to_messages(record, instruction: str | None = None) -> list[dict]:
    """Validate a record and return its chat messages; `instruction` overrides a downstream
    record's template (a drawn paraphrase). Raises RecordError naming the bad key."""
    if not isinstance(record, dict):
        raise RecordError("bad_record", f"record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        msgs = record["messages"]
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
    if "instruction" in record:
        for key in ("instruction", "response"):
            if not isinstance(record.get(key), str):
                raise RecordError("bad_record", f"downstream record needs a string '{key}'")
        fields = record.get("fields", {})
        if not isinstance(fields, dict):
            raise RecordError("bad_record", "'fields' must be an object")
        system = record.get("system")
        if system is not None and not isinstance(system, str):
            raise RecordError("bad_record", "'system' must be a string")
        text = render_instruction(record["instruction"] if instruction is None else instruction, fields)
        msgs = [{"role": "system", "content": system}] if system else []
        return msgs + [{"role": "user", "content": text}, {"role": "assistant", "content": record["response"]}]
    raise RecordError("bad_record", "record has neither 'messages' nor 'instruction'")


def tokenize_messages(tokenizer, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """ids (int32) and loss mask (uint8, 1 on assistant tokens) for one conversation.

    Templates with {% generation %} give the mask directly; for others (e.g. Llama 3's)
    the assistant span is the difference between renders with and without each reply,
    which holds for every prefix-stable template."""
    template = tokenizer.chat_template or ""
    if "generation" in template:
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        return (np.asarray(out["input_ids"], dtype=np.int32),
                np.asarray(out["assistant_masks"], dtype=np.uint8))
    ids = _encode(tokenizer, messages, False)
    mask = np.zeros(len(ids), dtype=np.uint8)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start = len(_encode(tokenizer, messages[:i], True)) if i else 0
            end = len(_encode(tokenizer, messages[:i + 1], False))
            mask[start:end] = 1
    return np.asarray(ids, dtype=np.int32), mask


def _encode(tokenizer, messages, add_generation_prompt):
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        add_generation_prompt=add_generation_prompt)
    return out["input_ids"]


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
