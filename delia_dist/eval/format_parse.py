"""Parse DELIA-format answers {"thought": ..., "hallucination": "yes"|"no"}.

Models and the DELIA data write JSON or Python-dict style (single quotes); both parse.
Nothing is rewritten: an answer that does not parse, lacks a key, or has a label other
than yes/no is malformed and counts as wrong. (The authors' script mapped "yes" to "no"
before parsing; we do not.)
"""
from __future__ import annotations

import ast
import json
from typing import Optional

LABELS = ("yes", "no")


def _candidates(text: str):
    """Every balanced {...} substring, outermost first."""
    starts = [i for i, c in enumerate(text) if c == "{"]
    for s in starts:
        depth, quote, esc = 0, None, False
        for j in range(s, len(text)):
            c = text[j]
            if quote:
                if esc:
                    esc = False
                elif c == "\\":
                    esc = True
                elif c == quote:
                    quote = None
            elif c in "\"'":
                quote = c
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    yield text[s:j + 1]
                    break


def parse_answer(text: str) -> Optional[dict]:
    """{"thought": str, "hallucination": "yes"|"no"} or None when malformed."""
    for cand in _candidates(text or ""):
        obj = None
        try:
            obj = json.loads(cand)
        except (ValueError, TypeError):
            try:
                obj = ast.literal_eval(cand)  # literals only: no code is executed
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
        if not isinstance(obj, dict):
            continue
        label = obj.get("hallucination")
        if isinstance(label, str) and label.strip().lower() in LABELS and isinstance(obj.get("thought"), str):
            return {"thought": obj["thought"], "hallucination": label.strip().lower()}
    return None
