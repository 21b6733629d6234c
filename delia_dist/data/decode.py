"""A shard sample's members -> a training Sample, as a pure function of the member bytes.

`decode` neither counts nor logs: it returns a `Decoded` sample or a `Skip` naming the
reason, and the reader counts skips. So re-reading a buffered sample by reference on
resume leaves the counters alone, and `delia data inspect` validates members exactly as
training decodes them.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

import numpy as np

from .errors import RecordError
from .records import to_messages, tokenize_messages

IGNORE = -100


class Sample:
    """One tokenized sample: ids, shifted labels (-100 where no loss), first position id,
    source index, and `ref` = (epoch, shard index, member index) where it was read."""
    __slots__ = ("ids", "labels", "pos0", "source", "ref")

    def __init__(self, ids, labels, pos0, source, ref=(0, 0, 0)):
        self.ids, self.labels, self.pos0, self.source, self.ref = ids, labels, pos0, source, ref

    def __len__(self):
        return len(self.ids)

    def tail(self, n: int) -> "Sample":
        """What is left after the first n tokens went into a row (split_samples)."""
        return Sample(self.ids[n:], self.labels[n:], self.pos0 + n, self.source, self.ref)


class Skip(NamedTuple):
    reason: str
    where: str
    message: str


class Decoded(NamedTuple):
    sample: Sample
    retokenized: bool
    truncated: bool


@dataclass(frozen=True)
class DecodeRules:
    """How one source's members become samples (fixed for a run)."""
    source: int
    name: str
    seed: int
    vocab_size: int
    seq_len: int
    tokenizer: Any = field(default=None, compare=False, repr=False)
    # tokens the training tokenizer added after sharding: records containing them are re-tokenized
    added_tokens: tuple[bytes, ...] = ()
    paraphrases: Mapping[str, list[str]] | None = field(default=None, compare=False, repr=False)
    overlong: str = "truncate"
    split_samples: bool = False
    # inspect parses every record's JSON; training only parses it when it re-tokenizes
    check_json: bool = False


def shifted_labels(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """labels[t] = ids[t+1] where t+1 is a loss token; the last position never has a target,
    so a packed sequence can never learn one sample's first token from another."""
    labels = np.full(len(ids), IGNORE, dtype=np.int32)
    labels[:-1] = np.where(mask[1:] != 0, ids[1:], IGNORE)
    return labels


def _parse(raw: bytes, where: str):
    try:
        return json.loads(raw), None
    except UnicodeDecodeError as e:
        return None, Skip("bad_utf8", f"{where}.json", f"not valid UTF-8: {e}")
    except ValueError as e:
        return None, Skip("bad_json", f"{where}.json", f"not valid JSON: {e}")


def decode(rules: DecodeRules, url: str, key: str, parts: dict, epoch: int) -> Decoded | Skip:
    """A validated sample from one shard sample's members, or the reason it is unusable."""
    where = f"{url} member {key}"
    raw = parts.get("json")
    retok, instruction, record = False, None, None
    if raw is not None and (rules.check_json or rules.paraphrases or rules.added_tokens):
        retok = any(t in raw for t in rules.added_tokens)
        if rules.check_json or rules.paraphrases:
            record, bad = _parse(raw, where)
            if bad:
                return bad
        if rules.check_json:
            try:
                to_messages(record)
            except RecordError as e:
                return Skip(e.reason, f"{where}.json", str(e))
        if rules.paraphrases:
            choices = rules.paraphrases.get(record.get("instruction")) if isinstance(record, dict) else None
            if choices:
                draw = random.Random(f"{rules.seed}|{rules.name}|{epoch}|{os.path.basename(url)}|{key}")
                instruction, retok = draw.choice(choices), True
    if retok:
        if record is None:
            record, bad = _parse(raw, where)
            if bad:
                return bad
        try:
            ids, mask = tokenize_messages(rules.tokenizer, to_messages(record, instruction))
        except RecordError as e:
            return Skip(e.reason, f"{where}.json", str(e))
    else:
        if "ids" not in parts or "mask" not in parts:
            missing = [e for e in ("ids", "mask") if e not in parts]
            return Skip("missing_member", where, f"no .{' .'.join(missing)} member")
        b_ids, b_mask = parts["ids"], parts["mask"]
        if len(b_ids) % 4:
            return Skip("bad_ids", f"{where}.ids", f"{len(b_ids)} bytes is not a whole number of int32")
        ids = np.frombuffer(b_ids, dtype="<i4")
        mask = np.frombuffer(b_mask, dtype=np.uint8)
        if len(ids) != len(mask):
            return Skip("length_mismatch", where, f"{len(ids)} ids but {len(mask)} mask entries")
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= rules.vocab_size):
            return Skip("token_out_of_range", f"{where}.ids",
                        f"ids in [{ids.min()}, {ids.max()}], tokenizer has {rules.vocab_size}")
    if len(ids) < 2:
        return Skip("empty", where, f"{len(ids)} tokens")
    truncated = False
    if len(ids) > rules.seq_len and not rules.split_samples:
        if rules.overlong == "skip":
            return Skip("overlong", where, f"{len(ids)} tokens > seq_len {rules.seq_len}")
        truncated = True
        ids, mask = ids[:rules.seq_len], mask[:rules.seq_len]
    labels = shifted_labels(ids, mask)
    if not (labels != IGNORE).any():
        return Skip("no_loss_tokens", where, "no assistant token to learn from")
    return Decoded(Sample(np.asarray(ids, dtype=np.int32), labels, 0, rules.source), retok, truncated)
