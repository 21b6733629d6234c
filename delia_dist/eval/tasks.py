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


def _dataset_rows(ds, p: Path, split: str | None) -> list[tuple[dict, str]]:
    if hasattr(ds, "keys"):  # a DatasetDict: the named split, else "test", else the only one
        names = list(ds.keys())
        if split is None:
            split = "test" if "test" in names else names[0] if len(names) == 1 else None
        if split not in names:
            raise UserError(f"{p}: splits {names}; set the task's split")
        ds = ds[split]
    return [(dict(r), f"{p}[{i}]") for i, r in enumerate(ds)]


def load_examples(path: str, max_samples: int | None = None, split: str | None = None) -> list[Example]:
    """JSONL is parsed here (errors name file:line); a directory written by
    Dataset.save_to_disk goes through load_from_disk; any other directory or a
    .json/.parquet/.csv file through datasets.load_dataset on the local path."""
    p = Path(path)
    rows: list[tuple[dict, str]] = []
    if p.is_file() and p.suffix == ".jsonl":
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((json.loads(line), f"{p}:{i}"))
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{i}: invalid JSON ({e.msg})") from None
    elif p.is_dir() and any((p / f).is_file() for f in ("dataset_dict.json", "state.json", "dataset_info.json")):
        from datasets import load_from_disk
        rows = _dataset_rows(load_from_disk(str(p)), p, split)
    elif p.exists():
        from datasets import load_dataset
        builder = {".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(p.suffix)
        if p.is_file() and builder is None:
            raise UserError(f"{p}: unsupported file type (use .jsonl, .json, .parquet, .csv or a dataset dir)")
        ds = load_dataset(builder, data_files=str(p)) if builder else load_dataset(str(p))
        rows = _dataset_rows(ds, p, split)
    else:
        raise UserError(f"evaluation data not found: {p}")
    if max_samples is not None:
        rows = rows[:max_samples]
    return [_from_record(r, w) for r, w in rows]
