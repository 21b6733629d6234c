"""The matrix in MLflow as researchers review it: one parent run per `delia experiment`, every
run (and seed) a child of it, each child described by what it changes against the base config.

The UI's runs table nests children under their parent (mlflow.parentRunId), so a matrix of
runs x seeds reads as one group instead of a flat list; the comparison table, report.md and
plots are the parent's artifacts.
"""
from __future__ import annotations

import contextlib
import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from ..config import Config, to_dict
from ..tracking import Tracker, default_uri
from ..tracking.outbox import recorded_run
from ..tracking.ui_tags import NOTE, PARENT_RUN, source_tags

log = logging.getLogger("delia.experiment")

PARENT_DIR = "_matrix"  # <run_dir>/_matrix: the parent run's event log and recorded run id
KIND_TAG = "delia.kind"  # matrix | run | base | report
# Set by plan_runs for every run, not chosen by the researcher: left out of the description.
BOOKKEEPING = ("run_dir", "tracking.uri", "tracking.run_name", "tracking.parent_run_id")
PARENT_WAIT_S = 60.0  # how long a server may take to create the parent before children go unnested


@contextlib.contextmanager
def tracked(cfg: Config, run_dir: Path, *, run_id: str | None = None, continue_recorded: bool = False,
            config: dict | None = None, tags: dict | None = None, wait_s: float | None = None) -> Iterator[Tracker]:
    """An open Tracker for the block, closed FINISHED, or FAILED when the block raises. It
    reopens `run_id`, or with continue_recorded the run recorded in run_dir; else a new run."""
    tracker = Tracker(cfg.tracking, run_dir, enabled=True)
    if run_id is not None or continue_recorded:
        tracker.load_state_dict({"run_id": run_id})
    tracker.start(config or {}, tags=tags or {}, wait_s=wait_s)
    try:
        yield tracker
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close("FINISHED")


def review_url(ui: str, experiment_id: str) -> str:
    """The experiment's runs table in MLflow's UI. MLflow 3.17's UI picks its page from a
    workflow switch (GenAI / Model training, default GenAI, kept in the browser), not from
    the experiment's kind tag: the URL chooses Model training."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def mark_failed(cfg: Config, run_dir: Path, tags: dict[str, str]) -> None:
    """A run whose training or export failed: if the trainer had created its MLflow run,
    give it its tags (parent, description) and mark it FAILED instead of leaving it RUNNING."""
    recorded = recorded_run(run_dir)
    if recorded and recorded.get("run_id"):
        tracker = Tracker(cfg.tracking, run_dir, enabled=True)
        tracker.load_state_dict({"run_id": recorded["run_id"]})
        tracker.start({}, tags=tags)
        tracker.close("FAILED")


def chosen_overrides(run_over: list[str]) -> list[str]:
    return [o for o in run_over if o.split("=", 1)[0].strip() not in BOOKKEEPING]


def child_tags(name: str, run_over: list[str], cmdline: list[str], cfg: Config, config_path: str,
               parent_run_id: str | None, kind: str = "run") -> dict[str, str]:
    """Tags of one child: its parent, its base run name and seed (`<name>-s<seed>` when
    experiment.seeds repeats the matrix), and a description naming its overrides."""
    tags = {KIND_TAG: kind, "delia.run": name}
    seeds = getattr(cfg.experiment, "seeds", None)
    m = re.fullmatch(rf"(.+)-s{cfg.train.seed}", name)
    if seeds and m:
        tags |= {"delia.run": m[1], "delia.seed": str(cfg.train.seed)}
    if parent_run_id:
        tags[PARENT_RUN] = parent_run_id
    own = [o for o in chosen_overrides(run_over) if o not in cmdline]
    lines = [f"**{name}**: `{config_path}` with"]
    lines += [f"- `{o}`" for o in own] or ["- no overrides (the base config as it is)"]
    if cmdline:
        lines += ["", "and, for every run of the matrix:"] + [f"- `{o}`" for o in cmdline]
    tags[NOTE] = "\n".join(lines)
    return tags


def parent_note(config_path: str, plan: list, cmdline: list[str]) -> str:
    lines = [f"`delia experiment {config_path}`: {len(plan)} runs, each a child of this run.", "",
             "| run | overrides against the base config |", "|---|---|"]
    lines += [f"| {name} | {', '.join(f'`{o}`' for o in chosen_overrides(over) if o not in cmdline) or '-'} |"
              for name, _, over, _ in plan]
    if cmdline:
        lines += ["", "Every run also: " + ", ".join(f"`{o}`" for o in cmdline)]
    return "\n".join(lines)


@contextlib.contextmanager
def matrix_parent(base: Config, config_path: str, plan: list, cmdline: list[str],
                  resume: bool) -> Iterator[Tracker]:
    """The parent run of one `delia experiment`, in the matrix's store and experiment. With
    `resume` it reopens the parent recorded in <run_dir>/_matrix, so resumed runs stay in
    their group; otherwise a new parent (the old directory is started over, as runs are)."""
    root = Path(base.run_dir)
    parent_dir = root / PARENT_DIR
    if parent_dir.exists() and not resume:
        shutil.rmtree(parent_dir)
    uri = default_uri(base.tracking, root)
    cfg = replace(base, tracking=replace(base.tracking, uri=uri, run_name=base.name, parent_run_id=None,
                                         system_metrics=False))
    tags = {**source_tags(f"delia experiment {config_path}"), KIND_TAG: "matrix",
            NOTE: parent_note(config_path, plan, cmdline)}
    with tracked(cfg, parent_dir, continue_recorded=resume, config=to_dict(base), tags=tags,
                 wait_s=PARENT_WAIT_S) as parent:
        if parent.run_id is None:
            log.warning("MLflow at %s did not create the matrix's parent run within %.0f s; its runs are "
                        "logged without a parent", uri, PARENT_WAIT_S)
        yield parent
