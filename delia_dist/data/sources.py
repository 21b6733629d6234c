"""Where data comes from: input records for sharding, shard specs for reading, the
training tokenizer, and paraphrase tables."""
from __future__ import annotations

import glob
import gzip
import json
import os
from pathlib import Path

from ..urls import is_url
from .errors import DataError, RecordError
from .shards import MANIFEST, load_manifest


def load_tokenizer(path):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot load tokenizer: {e}") from None


def iter_input_records(inputs, split: str = "train"):
    """Yield (location, record) from JSONL files or HF datasets on local disk; a line that is
    not JSON yields (location, RecordError) so the caller counts or raises it."""
    for spec in inputs:
        path = Path(spec)
        if path.is_file():
            yield from _iter_jsonl(path)
        elif path.is_dir():
            yield from _iter_hf(path, split)
        else:
            raise DataError(f"{spec}: no such file or directory")


def _iter_jsonl(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"{path}:{lineno}", RecordError("bad_json", f"not valid JSON: {e}")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def _iter_hf(path: Path, split: str):
    import datasets
    saved = any((path / n).exists() for n in ("dataset_info.json", "state.json", "dataset_dict.json"))
    try:
        ds = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(str(path), split=split)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{path}: cannot load dataset: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r} (has {sorted(ds)})")
        ds = ds[split]
    for i, row in enumerate(ds):
        yield f"{path}[{i}]", dict(row)


def resolve_shards(spec: str) -> tuple[list[str], dict | None, str]:
    """Shard URLs for a source spec, with the manifest (or None) and where it came from.

    Specs: a manifest.json (local or URL), a directory holding one, a glob or brace
    pattern of local tars, or URLs webdataset opens (pipe:..., http://...)."""
    from braceexpand import braceexpand
    if os.path.isdir(spec):
        spec = os.path.join(spec, MANIFEST)
    if spec.endswith(".json"):
        if not is_url(spec) and not os.path.exists(spec):
            raise DataError(f"{spec}: manifest not found (run `delia data shard` first?)")
        manifest = load_manifest(spec)
        urls = [s["url"] for s in manifest["shards"]]
        missing = [u for u in urls if not is_url(u) and not os.path.exists(u)]
        if missing:
            raise DataError(f"{spec}: {len(missing)} shard(s) listed but missing, e.g. {missing[0]}")
        return urls, manifest, spec
    patterns = list(braceexpand(spec))
    if is_url(spec):
        return patterns, None, spec
    urls = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if not found:
            raise DataError(f"{pattern}: no shard files match")
        urls.extend(found)
    dirs = {os.path.dirname(u) for u in urls}
    if len(dirs) == 1 and os.path.exists(os.path.join(dirs.pop() or ".", MANIFEST)):
        path = os.path.join(os.path.dirname(urls[0]) or ".", MANIFEST)
        return urls, load_manifest(path), path
    return urls, None, spec


def load_paraphrases(path) -> dict[str, list[str]]:
    """original instruction -> its choices (the original first, then distinct paraphrases)."""
    table: dict[str, list[str]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read paraphrases: {e.strerror or e}") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON: {e}") from None
        if not isinstance(row, dict) or not isinstance(row.get("original"), str) \
                or not isinstance(row.get("paraphrases"), list) \
                or not all(isinstance(p, str) for p in row["paraphrases"]):
            raise DataError(f"{path}:{lineno}: needs 'original' (str) and 'paraphrases' (list of str)")
        choices = table.setdefault(row["original"], [row["original"]])
        choices.extend(p for p in row["paraphrases"] if p not in choices)
    return table
