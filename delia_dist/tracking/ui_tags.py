"""The tags MLflow's UI reads, under the names it reads them (mlflow/utils/mlflow_tags.py and
the UI bundle of the pinned MLflow): a custom tag shows in the tag list only, these fill
the runs table's Source and Version columns, its parent/child grouping and the run's
description, and decide which page the experiment opens on."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

PARENT_RUN = "mlflow.parentRunId"
NOTE = "mlflow.note.content"           # the run page's Description
RUN_NAME = "mlflow.runName"
# The experiment's kind: without it an experiment whose runs log no model is shown as a
# GenAI app (Overview page with empty trace panels) instead of its runs table.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"   # shown as "Machine learning"

_USERINFO = re.compile(r"^(\w[\w+.-]*://)[^/@]*@")


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def source_tags(entry_point: str, job: bool = False, code_dir: Path | None = None) -> dict[str, str]:
    """mlflow.source.*: the command as the run's source, and the commit and repository of the
    code that ran it (code_dir: delia_dist's checkout; no git tags outside a checkout). The
    repository is origin's URL without any user:token@, else the checkout's path."""
    cwd = code_dir or Path(__file__).resolve().parent
    tags = {"mlflow.source.name": entry_point, "mlflow.source.type": "JOB" if job else "LOCAL"}
    commit = _git(cwd, "rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        branch = _git(cwd, "rev-parse", "--abbrev-ref", "HEAD")
        if branch and branch != "HEAD":
            tags["mlflow.source.git.branch"] = branch
        url = _git(cwd, "remote", "get-url", "origin") or _git(cwd, "rev-parse", "--show-toplevel")
        if url:
            tags["mlflow.source.git.repoURL"] = _USERINFO.sub(r"\1", url)
    return tags
