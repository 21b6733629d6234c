"""Staged copies of artifacts (the caller may delete or rewrite a file at once), scrubbed
of secrets when they are text, and the run id recorded beside the checkpoints."""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
from pathlib import Path

from .. import atomic
from ..redact import env_secrets, redact_text
from .common import STAGE_LIMIT, TEXT_SUFFIXES

log = logging.getLogger("delia.tracking")


def scrub_copy(src: Path, dst: Path) -> None:
    """Copy a text artifact line by line through redact_text, so size does not matter."""
    secrets = env_secrets()
    with open(src, encoding="utf-8", errors="replace", newline="") as fin, \
            open(dst, "w", encoding="utf-8", newline="") as fout:
        for line in fin:
            fout.write(redact_text(line, secrets))


class Outbox:
    def __init__(self, run_dir: Path):
        self.root = Path(run_dir) / "mlflow-outbox"
        self._ids = itertools.count()

    def new_dir(self) -> Path:
        d = self.root / f"{os.getpid()}-{next(self._ids)}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stage(self, path: Path, artifact_path: str | None) -> dict:
        """The artifact event for `path`: a staged copy, or the file itself if it is a large binary."""
        text = path.suffix.lower() in TEXT_SUFFIXES
        if not text and path.stat().st_size > STAGE_LIMIT:
            return {"artifact": str(path), "artifact_path": artifact_path, "staged": False}
        staged = self.new_dir() / path.name
        if text:
            scrub_copy(path, staged)
        else:
            shutil.copyfile(path, staged)
        return {"artifact": str(staged), "artifact_path": artifact_path, "staged": True}


def run_file(run_dir: Path) -> Path:
    return Path(run_dir) / "mlflow-run.json"


def record_run(run_dir: Path, run_id: str, experiment_id: str, uri: str) -> None:
    """The created run's id, beside the checkpoints (atomic write): a checkpoint saved before
    the server answered has no run id, and the resumed job continues this run instead."""
    path = run_file(run_dir)
    try:
        atomic.write_text(path, json.dumps({"run_id": run_id, "experiment_id": experiment_id,
                                            "uri": redact_text(uri)}))
    except OSError as e:
        log.warning("could not record MLflow run id in %s: %s", path, e)


def recorded_run(run_dir: Path) -> dict | None:
    path = run_file(run_dir)
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
        if isinstance(recorded, dict):
            return recorded
    except (OSError, ValueError):
        pass
    log.warning("%s is unreadable; the resumed job starts a new MLflow run", path)
    return None
