"""Evaluation examples from local files or HF datasets, in the shapes DELIA uses.

Accepted records (JSONL lines or dataset rows):
- downstream task records {"instruction", "fields", "response"} (this project's format);
- chat records {"messages": [..., assistant]}: the last assistant turn is the reference;
- WMT-style {"query", "response"} and Halu-CoT style {"prompt", "response"}.
A format-task reference is either a full answer or the bare label "yes"/"no".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.records import render_instruction
from ..errors import UserError
from .format_parse import parse_answer


@dataclass
class Example:
    messages: list[dict]   # the prompt, ending with a user turn
    reference: str
    label: str | None = None  # format task: gold "yes"/"no"


def _from_record(rec: dict, where: str) -> Example:
    if "instruction" in rec and "response" in rec:
        prompt = render_instruction(rec["instruction"], rec.get("fields", {}))
        msgs = ([{"role": "system", "content": rec["system"]}] if rec.get("system") else []) + \
               [{"role": "user", "content": prompt}]
        ref = rec["response"]
    elif "messages" in rec:
        msgs = list(rec["messages"])
        if not msgs or msgs[-1].get("role") != "assistant":
            raise UserError(f"{where}: chat record must end with an assistant turn (the reference)")
        ref = msgs.pop()["content"]
    elif "query" in rec and "response" in rec:
        msgs, ref = [{"role": "user", "content": rec["query"]}], rec["response"]
    elif "prompt" in rec and "response" in rec:
        msgs, ref = [{"role": "user", "content": rec["prompt"]}], rec["response"]
    else:
        raise UserError(f"{where}: unknown record shape (keys {sorted(rec)}); expected instruction/fields/"
                        "response, messages, query/response or prompt/response")
    if not isinstance(ref, str):
        raise UserError(f"{where}: reference must be a string")
    label = None
    bare = ref.strip().lower()
    if bare in ("yes", "no"):
        label = bare
    else:
        parsed = parse_answer(ref)
        label = parsed["hallucination"] if parsed else None
    return Example(messages=msgs, reference=ref, label=label)


def load_examples(path: str, max_samples: int | None = None) -> list[Example]:
    p = Path(path)
    rows: list[tuple[dict, str]] = []
    if p.is_file():
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((json.loads(line), f"{p}:{i}"))
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{i}: invalid JSON ({e.msg})") from None
    elif p.is_dir():
        from datasets import load_from_disk
        ds = load_from_disk(str(p))
        if hasattr(ds, "keys"):
            split = "test" if "test" in ds else next(iter(ds.keys()))
            ds = ds[split]
        rows = [(dict(r), f"{p}[{i}]") for i, r in enumerate(ds)]
    else:
        raise UserError(f"evaluation data not found: {p}")
    if max_samples is not None:
        rows = rows[:max_samples]
    return [_from_record(r, w) for r, w in rows]
