"""Evaluate an exported model on the configured tasks: generate, score, per-example tables,
special-token alignment and the loss on the tokens that carry the answer format."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..data.chat import fit_messages
from . import metrics as M
from .alignment import alignment_metrics
from .bootstrap import bootstrap_intervals
from .generate import generate
from .tasks import load_examples

log = logging.getLogger("delia.eval")
FORMAT_CHARS = set("{}'\":")


def format_token_losses(model, tokenizer, examples, new_tokens: list[str]) -> dict[str, float]:
    """Teacher-forced loss on the reference answers: over all answer tokens, and over the
    tokens that carry the format (braces, quotes, colons, new special tokens)."""
    from kernels import linear_cross_entropy
    special = {tokenizer.convert_tokens_to_ids(t) for t in new_tokens}
    fmt_sum = fmt_n = all_sum = all_n = 0.0
    for ex in examples:
        prompt = tokenizer.apply_chat_template(fit_messages(tokenizer, ex.messages), tokenize=False,
                                               add_generation_prompt=True)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(ex.reference, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + a_ids])
        with torch.no_grad():
            hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[0]
            labels = torch.full((ids.shape[1],), -100)
            labels[len(p_ids) - 1:-1] = torch.tensor(a_ids)
            tok_loss = linear_cross_entropy(hidden, model.get_output_embeddings().weight, labels,
                                            reduction="none", impl="chunked")
        for pos, tid in enumerate(a_ids):
            loss = float(tok_loss[len(p_ids) - 1 + pos])
            all_sum, all_n = all_sum + loss, all_n + 1
            text = tokenizer.decode([tid])
            if tid in special or FORMAT_CHARS & set(text):
                fmt_sum, fmt_n = fmt_sum + loss, fmt_n + 1
    out = {"answer_loss": all_sum / max(all_n, 1)}
    if fmt_n:  # bare "yes"/"no" references carry no format tokens: no number rather than a fake 0
        out["format_token_loss"] = fmt_sum / fmt_n
    return out


def source_batch(data_cfg, tokenizer, kind: str, batch_size: int) -> dict:
    """One packed micro-batch from the training sources of `kind` alone (weights renormalised),
    exactly as the trainer would see them."""
    import dataclasses

    from ..data import build_train_stream
    sources = [s for s in data_cfg.sources if s.kind == kind]
    if not sources:
        raise ValueError(f"eval.grad_cosine needs a data source of kind {kind!r}; sources are "
                         f"{[(s.name, s.kind) for s in data_cfg.sources]}")
    sources = [dataclasses.replace(s, weight=1.0 / len(sources)) for s in sources]
    stream = build_train_stream(dataclasses.replace(data_cfg, sources=sources), tokenizer, rank=0, world_size=1,
                                micro_batch_size=batch_size, num_workers=0)
    batch = next(iter(stream))
    return {k: batch[k] for k in ("input_ids", "labels", "position_ids")}


def generation_length(task, ev, examples, tokenizer) -> int:
    """The task's max_new_tokens: its own, eval.max_new_tokens, or from its longest reference."""
    if task.max_new_tokens == "longest_reference":
        longest = max((len(tokenizer(e.reference, add_special_tokens=False)["input_ids"]) for e in examples), default=0)
        return int(longest * 1.25) + 8
    return task.max_new_tokens or ev.max_new_tokens


def evaluate(model_dir: str | Path, cfg, tracker=None, step: int | None = None) -> dict[str, float]:
    """Scores every task in cfg.eval.tasks; logs metrics and tables to `tracker` if given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = str(model_dir)
    ev = cfg.eval
    results: dict[str, float] = {}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    for task in ev.tasks:
        examples = load_examples(task.path, task.max_samples, task.split)
        outputs = generate(model_dir, [e.messages for e in examples], generation_length(task, ev, examples, tokenizer),
                           ev.backend)
        prefix = f"eval/{task.name}"
        if task.kind == "translation":
            refs = [e.reference for e in examples]
            scores = M.translation_scores(outputs, refs)
            rows = [{"input": e.messages[-1]["content"], "output": o, "reference": e.reference,
                     "score": M.sentence_bleu(o, e.reference)} for e, o in zip(examples, outputs)]
            if ev.bleurt_checkpoint:
                from .bleurt import bleurt_scores
                bl = bleurt_scores(ev.bleurt_checkpoint, outputs, refs)
                scores["bleurt"] = sum(bl) / max(len(bl), 1)
                for r, b in zip(rows, bl):
                    r["bleurt"] = b
        else:
            missing = [i for i, e in enumerate(examples) if e.label is None]
            if missing:
                raise ValueError(f"{task.path}: {len(missing)} references have no yes/no label "
                                 f"(first at example {missing[0]})")
            scores, judged = M.format_scores(outputs, [e.label for e in examples])
            for metric, (lo, hi) in bootstrap_intervals(judged).items():  # 95%, over examples
                scores[f"{metric}_lo"], scores[f"{metric}_hi"] = lo, hi
            scores.update(format_token_losses(model, tokenizer, examples, [t.token for t in cfg.model.new_tokens]))
            rows = [{"input": e.messages[-1]["content"], "output": o, "reference": e.reference,
                     "score": float(j["correct"]), "prediction": j["prediction"]}
                    for e, o, j in zip(examples, outputs, judged)]
        results.update({f"{prefix}/{k}": float(v) for k, v in scores.items()})
        if tracker is not None:
            tracker.log_table(rows, f"eval_{task.name}.jsonl")
        log.info("%s: %s", task.name, {k: round(v, 4) for k, v in scores.items()})
    if ev.alignment.keywords:
        results.update(alignment_metrics(model, tokenizer, ev.alignment.keywords, ev.alignment.layers))
    if ev.grad_cosine:
        from .gradients import gradient_cosines
        results.update(gradient_cosines(model, source_batch(cfg.data, tokenizer, "diverse", ev.grad_batch_size),
                                        source_batch(cfg.data, tokenizer, "downstream", ev.grad_batch_size)))
    if tracker is not None:
        tracker.log_metrics(results, step=step if step is not None else 0)
    return results
