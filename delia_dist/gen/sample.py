"""Diverse data by self-sampling (DELIA stage 1): the model re-answers existing queries.

Reference recipe: [system, user query, assistant reference answer, user the same query]
-> a fresh answer (temperature 0.7, top_p 0.95, max_tokens 512, one sample per query).
Input is split into parts across Slurm array tasks or ranks; each part is generated,
written as shards with a manifest and marked done, so a rerun skips finished parts.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import UserError
from .vllm_worker import generate_chat

log = logging.getLogger("delia.sample")


def read_queries(path: str | Path) -> list[dict]:
    """{"query", "reference"?} lines, or chat records (first user turn, first assistant turn)."""
    p = Path(path)
    rows: list[dict] = []
    if p.is_dir():
        from datasets import load_from_disk
        ds = load_from_disk(str(p))
        items = [(f"{p}[{i}]", dict(r)) for i, r in enumerate(ds)]
    elif p.is_file():
        items = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    items.append((f"{p}:{n}", json.loads(line)))
                except ValueError as e:
                    raise UserError(f"{p}:{n}: invalid JSON ({e})") from None
    else:
        raise UserError(f"query file not found: {p}")
    for where, rec in items:
        if isinstance(rec.get("query"), str):
            rows.append({"query": rec["query"], "reference": rec.get("reference")})
        elif isinstance(rec.get("messages"), list):
            user = next((m["content"] for m in rec["messages"] if m.get("role") == "user"), None)
            ref = next((m["content"] for m in rec["messages"] if m.get("role") == "assistant"), None)
            if user is None:
                raise UserError(f"{where}: chat record without a user turn")
            rows.append({"query": user, "reference": ref})
        else:
            raise UserError(f"{where}: needs 'query' or 'messages'")
    return rows


def chat_for(q: dict, system: str) -> list[dict]:
    chat = [{"role": "system", "content": system}] if system else []
    chat.append({"role": "user", "content": q["query"]})
    if q.get("reference"):
        chat += [{"role": "assistant", "content": q["reference"]}, {"role": "user", "content": q["query"]}]
    return chat


def sample(model_dir: str, queries_path: str, out_dir: str, cfg, task_index: int = 0, num_tasks: int = 1,
           parts_per_task: int = 1) -> list[Path]:
    """Generate this task's parts; returns the part directories (done ones are skipped)."""
    from transformers import AutoTokenizer

    from ..data import ShardWriter

    if not 0 <= task_index < num_tasks:
        raise UserError(f"task index {task_index} not in [0, {num_tasks})")
    queries = read_queries(queries_path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    n_parts = num_tasks * parts_per_task
    done_parts = []
    for part in range(task_index, n_parts, num_tasks):
        part_dir = Path(out_dir) / f"part-{part:05d}"
        if (part_dir / "DONE").is_file():
            log.info("%s already done, skipping", part_dir)
            done_parts.append(part_dir)
            continue
        mine = [(i, q) for i, q in enumerate(queries) if i % n_parts == part]
        outs = generate_chat(model_dir, [chat_for(q, cfg.system_prompt) for _, q in mine],
                             temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, n=cfg.n,
                             seed=cfg.seed + part, tensor_parallel_size=cfg.tensor_parallel_size)
        empty = 0
        with ShardWriter(part_dir, tokenizer, prefix="shard") as w:
            for (i, q), texts in zip(mine, outs):
                for j, text in enumerate(texts):
                    if not text.strip():
                        empty += 1
                        continue
                    w.write({"messages": [{"role": "user", "content": q["query"]},
                                          {"role": "assistant", "content": text}],
                             "meta": {"query_index": i, "sample": j, "model": str(model_dir), "seed": cfg.seed + part}})
        if empty:
            log.warning("%s: %d empty generations skipped", part_dir, empty)
        (part_dir / "DONE").write_text(json.dumps({"queries": len(mine), "empty": empty}))
        done_parts.append(part_dir)
    return done_parts
