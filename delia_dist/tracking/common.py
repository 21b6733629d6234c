"""MLflow's limits and naming rules, the URI a run dir uses, and which failures are final."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..redact import redact

MAX_PARAM_LEN = 6000       # MLflow's limit on a param value
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_TAG_LEN = 8000
MAX_DROP_WARNINGS = 20     # past this, rejected items are only counted (Tracker.dropped)
STAGE_LIMIT = 256 << 20    # larger binary artifacts are uploaded from where they are, not copied
TEXT_SUFFIXES = {".yaml", ".yml", ".json", ".jsonl", ".txt", ".md", ".csv", ".log"}

_BAD_NAME = re.compile(r"[^\w\-. :/]")


def clean_name(name: str) -> str:
    """MLflow keys allow only [A-Za-z0-9_-. :/]; '<sep>' becomes '_sep_'."""
    return _BAD_NAME.sub("_", name)


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys; a list of dicts is keyed by each item's `name` (data.sources.diverse.weight)."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}.{v.get('name', i)}"))
    else:
        out[prefix] = json.dumps(d) if isinstance(d, (list, dict)) else str(d)
    return out


def default_uri(cfg, run_dir: Path) -> str:
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(run_dir).resolve()}/mlflow.db"


def store_dir(cfg, run_dir: Path) -> Path | None:
    """The directory a local MLflow store (sqlite file or file store) writes to; None for a server."""
    uri = default_uri(cfg, run_dir)
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent
    if uri.startswith("file:"):
        return Path(uri[len("file:"):].removeprefix("//"))
    return None if "://" in uri else Path(uri)


def artifact_root(uri: str, experiment: str) -> str | None:
    """Where a new experiment in an sqlite store keeps its artifacts: a directory of its own
    beside the store (<run_dir>/mlartifacts/<experiment>), not inside one run's directory, so
    removing a run's directory loses no other run's artifacts. Servers and file stores
    choose for themselves (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "mlartifacts" / clean_name(experiment).replace("/", "_")).resolve().as_uri()


def is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def tag_event(tags: dict[str, Any]) -> dict:
    """A tag update as logged: MLflow-safe keys, values cut to MLflow's limit, secrets masked."""
    return {"tags": redact({clean_name(str(k)): str(v)[:MAX_TAG_LEN] for k, v in tags.items()})}


def is_permanent(e: Exception) -> bool:
    """A 4xx answer (bad value, changed param, deleted run) fails the same way every time;
    408/429/499 and everything else (connection errors, timeouts, 5xx) may pass later."""
    from mlflow.exceptions import MlflowException

    if not isinstance(e, MlflowException):
        return False
    status = e.get_http_status_code()
    return 400 <= status < 500 and status not in (408, 429, 499)


def run_gone(e: Exception) -> bool:
    """404 (no such run) or 400 for a deleted run: the whole batch fails, not one item."""
    return e.get_http_status_code() == 404 or "must be in the 'active' state" in str(e)
