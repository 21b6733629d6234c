"""MLflow tracking that never stops training.

Rank 0 owns the run; other ranks hold a disabled tracker (every call a no-op). Three
small parts, each with one job:
  eventlog.EventLog  the training thread puts events on an in-memory queue; a writer
                     thread appends them to <run_dir>/mlflow-events.jsonl, beside a
                     "delivered up to" cursor. The training thread never does I/O.
  sender.Sender      one thread reads the log from the cursor and delivers it to MLflow,
                     with its own timeout per request (no process-wide MLFLOW_HTTP_*).
  Tracker (here)     the facade the trainer, `delia eval` and `delia experiment` use.
close() waits at most `close_timeout_s`; what is undelivered then stays in the log and
the next Tracker on the same run directory sends it first, into the same run (the run
id comes back through state_dict/load_state_dict or <run_dir>/mlflow-run.json).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from .. import atomic
from ..redact import redact, redact_text
from . import ui_tags
from .common import MAX_PARAM_LEN, clean_name, default_uri, flatten, is_local, is_permanent, tag_event
from .eventlog import EventLog
from .outbox import Outbox, recorded_run, run_file
from .sender import RunRef, Sender
from .sysmetrics import sample_system

__all__ = ["MAX_PARAM_LEN", "Tracker", "clean_name", "default_uri", "flatten", "is_permanent"]
log = logging.getLogger("delia.tracking")


class Tracker:
    def __init__(self, cfg, run_dir: str | os.PathLike, enabled: bool = True):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.enabled = bool(enabled and cfg.enabled)
        self.last_step = -1
        self._run = RunRef()
        self._events = EventLog(self.run_dir)
        self._outbox = Outbox(self.run_dir)
        self._uri = ""
        self._sender: Sender | None = None
        self._dropped_before = 0
        self._sysmon_stop = threading.Event()

    # -- state ---------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        return self._run.run_id

    @property
    def experiment_id(self) -> str | None:
        return self._run.experiment_id

    @property
    def dropped(self) -> int:
        """Items the server rejected for good (4xx)."""
        return self._dropped_before + (self._sender.dropped if self._sender else 0)

    def state_dict(self) -> dict:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self._run.run_id = state.get("run_id")
        self._run.experiment_id = state.get("experiment_id")
        self.last_step = state.get("last_step", -1)
        if self.run_id is None and self.enabled:
            # The checkpoint was written before the server answered and the run existed; the
            # sender noted the run it created later in the run directory: continue that one
            # instead of splitting the job over two runs.
            recorded = recorded_run(self.run_dir)
            if recorded and recorded.get("uri") == redact_text(default_uri(self.cfg, self.run_dir)):
                self._run.run_id, self._run.experiment_id = recorded.get("run_id"), recorded.get("experiment_id")
                log.info("checkpoint has no MLflow run id (saved before the run was created); continuing "
                         "run %s recorded in %s", self.run_id, run_file(self.run_dir))

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, config: dict, tags: dict[str, Any] | None = None, wait_s: float | None = None) -> None:
        """Open the event log and start the sender, which creates (or reopens) the run.

        For a local sqlite/file store (no network) it waits up to `wait_s` (default 120 s:
        the first use migrates the schema) so callers have the run id at once; for a server
        it does not wait by default: the sender creates the run whenever the server answers.
        """
        if not self.enabled:
            return
        # Imported here, once, before the sender and sampler threads: two threads importing
        # mlflow at the same moment can each see it half-initialized.
        import mlflow.system_metrics.metrics.cpu_monitor  # noqa: F401
        import mlflow.tracking  # noqa: F401

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._uri = default_uri(self.cfg, self.run_dir)
        all_tags = {k: str(v) for k, v in {**self.cfg.tags, **(tags or {})}.items()}
        if self.cfg.parent_run_id:
            all_tags[ui_tags.PARENT_RUN] = self.cfg.parent_run_id
        self._events.open()
        self._sender = Sender(self.cfg, self._uri, self.run_dir, self._events, self._run, self._outbox,
                              redact(config), all_tags)
        self._events.on_write = self._sender.on_write
        self._sender.start()
        if self.cfg.system_metrics:
            self._sysmon_stop.clear()
            threading.Thread(target=sample_system, name="delia-sysmetrics", daemon=True,
                             args=(self._sysmon_stop, self.cfg.system_metrics_interval_s,
                                   lambda values: self.log_metrics(values, max(self.last_step, 0)))).start()
        wait = wait_s if wait_s is not None else (120.0 if is_local(self._uri) else 0.0)
        if wait > 0:
            self._sender.opened.wait(wait)

    def close(self, status: str = "FINISHED") -> None:
        """Deliver what is logged (waiting at most close_timeout_s) and end the run; what is
        not delivered by then stays in the event log for the next Tracker."""
        if not self.enabled or self._sender is None:
            return
        self._sysmon_stop.set()
        deadline = time.monotonic() + self.cfg.close_timeout_s
        self._events.close(max(self.cfg.close_timeout_s, 5.0))  # local disk: everything queued is written
        sender, self._sender = self._sender, None
        sender.stop(status, max(deadline - time.monotonic(), 0.0))
        self._dropped_before += sender.dropped
        n_metrics, n_other = self._events.undelivered(sender.cursor)
        if not (n_metrics or n_other) and not sender.alive():
            self._events.remove()
        elif n_metrics or n_other:
            log.warning("MLflow at %s: not delivered within close_timeout_s=%.1f s: %d metric values and %d "
                        "tag/artifact updates%s, kept in %s; the next Tracker on this run directory sends them",
                        redact_text(self._uri), self.cfg.close_timeout_s, n_metrics, n_other,
                        "" if sender.opened.is_set() else " (the run was never created)", self._events.path)

    # -- logging (training thread: memory only) --------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            try:
                items.append([clean_name(str(k)), float(v), now, int(step)])
            except (TypeError, ValueError):
                log.warning("metric %s=%r is not a number; not logged", k, v)
        self.last_step = max(self.last_step, int(step))
        if items:
            self._events.put({"m": items})

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled:
            self._events.put(tag_event(tags))

    def log_datasets(self, datasets: list[dict]) -> None:
        """Run inputs (datasets.source_datasets): the runs table's Dataset column."""
        if self.enabled and datasets:
            self._events.put({"inputs": datasets})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file or directory; text files are scrubbed of secrets on a staged copy."""
        if not self.enabled:
            return
        path = Path(path)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                self.log_artifact(child, f"{artifact_path}/{path.name}" if artifact_path else path.name)
            return
        try:
            self._events.put(self._outbox.stage(path, artifact_path))
        except OSError as e:
            log.warning("artifact %s not logged: %s", path, e)

    def log_figure(self, fig, name: str) -> None:
        if not self.enabled:
            return
        staged = self._outbox.new_dir() / name
        fig.savefig(staged, dpi=120, bbox_inches="tight")
        self._events.put({"artifact": str(staged), "artifact_path": "plots", "staged": True})

    def log_table(self, rows: list[dict], name: str) -> None:
        """rows as JSONL under tables/<name> (secrets scrubbed)."""
        if not self.enabled:
            return
        staged = self._outbox.new_dir() / name
        atomic.write_text(staged, "".join(json.dumps(redact(r), ensure_ascii=False, default=str) + "\n" for r in rows))
        self._events.put({"artifact": str(staged), "artifact_path": "tables", "staged": True})

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything logged so far is delivered; False if that took too long."""
        if not self.enabled or self._sender is None:
            return True
        deadline = time.monotonic() + timeout_s
        if not self._events.sync(timeout_s):
            return False
        while time.monotonic() < deadline:
            if self._sender.idle():
                return True
            self._sender.wake()
            time.sleep(0.05)
        return False
