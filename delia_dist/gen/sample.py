"""Diverse data by self-sampling (DELIA stage 1): the model re-answers existing queries.

Reference recipe: [system, user query, assistant reference answer, user the same query]
-> a fresh answer (temperature 0.7, top_p 0.95, max_tokens 512, one sample per query).
Input is split into parts across Slurm array tasks or ranks; each part is generated,
written as shards with a manifest and marked done (atomically, with its counts), so a
rerun skips finished parts and regenerates unfinished ones from scratch. The split itself
(parts, input, sampling settings) is recorded in <out>/layout.json: a rerun with another
split or other settings would silently mix data, so it is refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

from .. import atomic
from ..errors import UserError
from .vllm_worker import generate_chat

log = logging.getLogger("delia.sample")
DONE = "DONE"


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
        if not isinstance(rec, dict):
            raise UserError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
        if isinstance(rec.get("query"), str):
            ref = rec.get("reference")
            if ref is not None and not isinstance(ref, str):
                raise UserError(f"{where}: 'reference' must be a string")
            rows.append({"query": rec["query"], "reference": ref})
        elif isinstance(rec.get("messages"), list):
            turns = [m for m in rec["messages"] if isinstance(m, dict) and isinstance(m.get("content"), str)]
            user = next((m["content"] for m in turns if m.get("role") == "user"), None)
            ref = next((m["content"] for m in turns if m.get("role") == "assistant"), None)
            if user is None:
                raise UserError(f"{where}: chat record without a user turn")
            rows.append({"query": user, "reference": ref})
        else:
            raise UserError(f"{where}: needs 'query' or 'messages'")
    if not rows:
        raise UserError(f"{p}: no queries")
    return rows


def chat_for(q: dict, system: str) -> list[dict]:
    chat = [{"role": "system", "content": system}] if system else []
    chat.append({"role": "user", "content": q["query"]})
    if q.get("reference"):
        chat += [{"role": "assistant", "content": q["reference"]}, {"role": "user", "content": q["query"]}]
    return chat


def part_queries(n_queries: int, part: int, n_parts: int) -> list[int]:
    """Query indices of one part: round-robin, so parts are balanced and disjoint."""
    return list(range(part, n_queries, n_parts))


def check_layout(out_dir: Path, layout: dict) -> None:
    """Every task of a run must split the same input the same way with the same settings."""
    path = out_dir / "layout.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in {*old, *layout} if old.get(k) != layout.get(k))
        if diff:
            raise UserError(f"{out_dir} was started with other {', '.join(diff)} ({path}); "
                            f"use a new --out or the same settings and --num-tasks/--parts-per-task")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(layout, indent=1, sort_keys=True))  # same content from every task


def sample(model_dir: str, queries_path: str, out_dir: str, cfg, task_index: int = 0, num_tasks: int = 1,
           parts_per_task: int = 1) -> list[Path]:
    """Generate this task's parts; returns the part directories (done ones are skipped)."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from ..data import ShardWriter
    from ..data.chat import end_of_turn_ids, fit_messages
    from ..data.errors import RecordError

    if num_tasks < 1 or parts_per_task < 1:
        raise UserError(f"num_tasks ({num_tasks}) and parts_per_task ({parts_per_task}) must be >= 1")
    if not 0 <= task_index < num_tasks:
        raise UserError(f"task index {task_index} not in [0, {num_tasks})")
    if not Path(model_dir).is_dir():
        raise UserError(f"model directory not found: {model_dir}")
    queries = read_queries(queries_path)
    out = Path(out_dir)
    n_parts = num_tasks * parts_per_task
    settings = {k: getattr(cfg, k) for k in ("system_prompt", "temperature", "top_p", "max_tokens", "n", "seed")}
    digest = hashlib.sha256(json.dumps(queries, sort_keys=True).encode()).hexdigest()[:16]
    check_layout(out, {"parts": n_parts, "queries": len(queries), "queries_sha256": digest,
                       "model": str(Path(model_dir).resolve()), **settings})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    mine_parts = list(range(task_index, n_parts, num_tasks))
    done_parts = []
    for k, part in enumerate(mine_parts, 1):
        part_dir = out / f"part-{part:05d}"
        if (part_dir / DONE).is_file():
            log.info("%s already done, skipping", part_dir)
            done_parts.append(part_dir)
            continue
        if part_dir.exists():  # an interrupted attempt: its shards may be stale or torn
            log.info("%s is incomplete, regenerating it", part_dir)
            shutil.rmtree(part_dir)
        mine = part_queries(len(queries), part, n_parts)
        seed = cfg.seed + part
        log.info("part %d (%d of %d for task %d/%d): %d queries, seed %d", part, k, len(mine_parts), task_index,
                 num_tasks, len(mine), seed)
        outs = generate_chat(model_dir, [fit_messages(tokenizer, chat_for(queries[i], cfg.system_prompt))
                                         for i in mine],
                             temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, n=cfg.n,
                             seed=seed, tensor_parallel_size=cfg.tensor_parallel_size, skip_too_long=True,
                             stop_token_ids=end_of_turn_ids(tokenizer)) if mine else []
        skipped: Counter = Counter()
        with ShardWriter(part_dir, tokenizer, max_shard_bytes=int(cfg.max_shard_mb * (1 << 20)),
                         prefix="shard") as w, \
                tqdm(total=len(mine) * cfg.n, desc=f"part {part} shards", unit="sample") as bar:
            for i, texts in zip(mine, outs):
                if not texts:
                    skipped["prompt_too_long"] += cfg.n
                for j, text in enumerate(texts):
                    bar.update(1)
                    if not text.strip():
                        skipped["empty"] += 1
                        continue
                    record = {"messages": [{"role": "user", "content": queries[i]["query"]},
                                           {"role": "assistant", "content": text}],
                              "meta": {"query_index": i, "sample": j, "model": str(model_dir), "seed": seed}}
                    try:
                        w.write(record)
                    except RecordError as e:
                        skipped[e.reason] += 1
                        log.debug("query %d sample %d skipped: %s", i, j, e)
        if skipped:
            log.warning("%s: skipped %s", part_dir, dict(skipped))
        atomic.write_text(part_dir / DONE, json.dumps({"queries": len(mine), "samples": w.samples, "tokens": w.tokens,
                                                   "skipped": dict(skipped), "seed": seed}))
        done_parts.append(part_dir)
    return done_parts
