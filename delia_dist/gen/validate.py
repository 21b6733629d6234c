"""What makes a paraphrase of a task instruction acceptable.

It must keep every placeholder ({source}) and special token (<sep>) exactly as often as the
original, not be empty, and not be a near-copy of the original or of another accepted
paraphrase (difflib's ratio above max_similarity): DELIA wants *anisotropic* variety."""
from __future__ import annotations

import difflib
import json
import re
from collections import Counter

PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
SPECIAL = re.compile(r"<[^<>\s{}]+>")


def markers(text: str) -> Counter:
    return Counter(PLACEHOLDER.findall(text)) + Counter(SPECIAL.findall(text))


def parse_candidates(content: str) -> list[str]:
    """A JSON list of strings anywhere in the reply; else one candidate per non-empty line
    with list numbering removed."""
    start, end = content.find("["), content.rfind("]")
    if 0 <= start < end:
        try:
            items = json.loads(content[start:end + 1])
            if isinstance(items, list):
                return [i for i in items if isinstance(i, str)]
        except ValueError:
            pass
    lines = [re.sub(r"^\s*(\d+[.)]|[-*])\s*", "", l).strip() for l in content.splitlines()]
    return [l for l in lines if l]


def rejection(candidate: str, original: str, accepted: list[str], max_similarity: float) -> str | None:
    """None if acceptable, else the reason (counted and logged by the caller)."""
    text = candidate.strip()
    if not text:
        return "empty"
    if markers(text) != markers(original):
        return "placeholders"
    for other in [original, *accepted]:
        if difflib.SequenceMatcher(None, text, other).ratio() > max_similarity:
            return "near_duplicate"
    return None
