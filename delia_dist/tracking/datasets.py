"""A run's data sources as MLflow datasets: the runs table's Dataset column shows each with its
role (diverse / downstream), and two runs that read the same shards show the same digest.

The digest is a fingerprint of the shard manifest's content (shards with their sample, token
and byte counts, totals, tokenizer fingerprint), not of its creation time or location: the same
shards copied elsewhere keep their digest, a re-tokenized or re-sharded set gets a new one."""
from __future__ import annotations

import hashlib
import json
import logging

log = logging.getLogger("delia.tracking")
DIGEST_LEN = 16  # MLflow stores digests in a 36-character column


def manifest_digest(manifest: dict) -> str:
    shards = [{k: s.get(k) for k in ("path", "samples", "tokens", "bytes")} for s in manifest.get("shards", [])]
    content = {"format": manifest.get("format"), "shards": shards,
               **{k: manifest.get(k) for k in ("samples", "tokens", "loss_tokens")},
               "tokenizer": (manifest.get("tokenizer") or {}).get("fingerprint")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:DIGEST_LEN]


def source_datasets(sources) -> list[dict]:
    """One dataset record per configured source (config.data.sources) the run reads from (weight > 0):
    name, digest, source (the manifest), profile (samples, tokens, loss tokens, shards), role. A manifest that
    cannot be read here is skipped with a warning: the run's data stream reports it anyway."""
    from ..data.shards import load_manifest
    from ..errors import UserError

    out = []
    for s in sources:
        if s.weight == 0:  # not read at all (the baseline's diverse source): not an input of this run
            continue
        try:
            manifest = load_manifest(s.shards)
        except (OSError, UserError, ValueError) as e:
            log.warning("source %s: manifest %s unreadable (%s); not logged as an MLflow dataset", s.name, s.shards,
                        str(e)[:200])
            continue
        profile = {k: manifest.get(k) for k in ("samples", "tokens", "loss_tokens")}
        profile["shards"] = len(manifest["shards"])
        out.append({"name": s.name, "digest": manifest_digest(manifest), "role": s.kind,
                    "source_type": "http" if "://" in s.shards else "local",
                    "source": json.dumps({"uri": s.shards}), "profile": json.dumps(profile)})
    return out
