"""The one thread that talks to MLflow: it reads the event log from the cursor, creates or
reopens the run, delivers in order and moves the cursor past what the server accepted.

Transient failures (connection errors, timeouts, 408/429/5xx) are retried with backoff
and warned about once when they start and once when they end; a value the server rejects
for good (4xx) is dropped with a counted warning instead of being retried forever. A
request that timed out after the server applied it is sent again: MLflow stores an
identical (key, value, timestamp, step) once, and tags, params and artifacts are
idempotent, so delivery is at least once and storage exactly once.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .. import atomic
from ..redact import redact_text
from . import common, ui_tags
from .common import artifact_root, clean_name, flatten, is_permanent, run_gone, tag_event
from .eventlog import EventLog
from .outbox import Outbox, record_run

log = logging.getLogger("delia.tracking")
WAKE_BYTES = 64 << 10  # undelivered bytes that wake the sender before flush_interval_s


class RunRef:
    """The run the facade reports and the sender fills in once the server answers."""

    def __init__(self, run_id: str | None = None, experiment_id: str | None = None):
        self.run_id, self.experiment_id = run_id, experiment_id


class _RunRefused(Exception):
    """A 4xx while creating or reopening the run: without a run nothing can be sent."""


class Sender:
    def __init__(self, cfg, uri: str, run_dir: Path, events: EventLog, run: RunRef, outbox: Outbox,
                 config: dict, tags: dict[str, str]):
        self.cfg, self.uri, self.run_dir, self.events, self.run, self.outbox = cfg, uri, run_dir, events, run, outbox
        self.dropped = 0                     # items the server rejected for good (4xx)
        self.opened = threading.Event()      # run created/reopened on the server
        self.cursor = events.load_cursor()
        self.final_status = "FINISHED"
        self._start: tuple | None = (config, tags)
        self._config_pending = False
        self._backend = None
        self._wake, self._stop = threading.Event(), threading.Event()
        self._lock = threading.Lock()        # the cursor moves only while not abandoned
        self._abandoned = False
        self._failing_since: float | None = None
        self._failures = 0
        self._late = 0                       # values delivered during the current outage
        self._thread = threading.Thread(target=self._loop, name="delia-mlflow", daemon=True)

    # -- facade side ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def on_write(self) -> None:
        if self.events.size - self.cursor >= WAKE_BYTES:
            self._wake.set()

    def idle(self) -> bool:
        return self.opened.is_set() and self.cursor >= self.events.size

    def stop(self, status: str, timeout: float) -> bool:
        """Deliver the rest within `timeout` and end the run; False if the thread had to be
        left inside a request (it then touches neither the cursor nor the run)."""
        self.final_status = status
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            self._abandoned = self._thread.is_alive()
        return not self._abandoned

    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- thread -------------------------------------------------------------------------------
    def _loop(self) -> None:
        next_try = 0.0
        while not self._abandoned:
            self._wake.wait(self.cfg.flush_interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            if stopping or time.monotonic() >= next_try:
                try:
                    self._deliver()
                except _RunRefused as e:
                    log.warning("MLflow at %s refused to create or reopen the run (%s); not retried: values "
                                "stay in %s", redact_text(self.uri), redact_text(str(e.__cause__))[:300],
                                self.events.path)
                    return
                except Exception as e:  # noqa: BLE001 - transient: keep training, retry later
                    self._note_failure(e)
                    # Backoff: retry_after_s, doubling per failure, at most 8x.
                    next_try = time.monotonic() + self.cfg.retry_after_s * 2 ** min(self._failures - 1, 3)
                    if stopping:
                        return
                else:
                    self._note_success()
            if stopping:
                if self._failing_since is None and self.run.run_id is not None and not self._abandoned:
                    self._terminate()
                return

    def _deliver(self) -> None:
        if self._backend is None:
            from .backend import MlflowBackend
            self._backend = MlflowBackend(self.uri, self.cfg.http_timeout_s)
        if self._start is not None:
            try:
                self._open_run()
            except Exception as e:  # noqa: BLE001
                if is_permanent(e):
                    raise _RunRefused() from e
                raise
        while not self._abandoned:
            events, end, bad = self.events.read_batch(self.cursor, common.MAX_METRICS_PER_BATCH)
            if bad:
                log.warning("%s: skipped %d unreadable lines", self.events.path, bad)
            if end == self.cursor:
                return
            metrics = [m for e in events if "m" in e for m in e["m"]]
            for i in range(0, len(metrics), common.MAX_METRICS_PER_BATCH):
                self._send_metrics(metrics[i:i + common.MAX_METRICS_PER_BATCH])
            for e in events:
                if "m" not in e:
                    self._apply(e)
            self._advance(end)

    def _advance(self, end: int) -> None:
        with self._lock:
            if self._abandoned:
                return
            self.cursor = end
            try:
                self.events.save_cursor(end)
            except OSError as e:
                log.warning("cannot save %s (%s); a restart sends those events again", self.events.cursor_path, e)

    def _note_failure(self, e: Exception) -> None:
        self._failures += 1
        if self._failing_since is None and not self._abandoned:
            self._failing_since = time.monotonic()
            log.warning("MLflow at %s unreachable (%s); training continues, values are kept in %s and retried "
                        "with backoff from %.1f s", redact_text(self.uri), redact_text(str(e))[:300],
                        self.events.path, self.cfg.retry_after_s)

    def _note_success(self) -> None:
        if self._failing_since is not None and not self._abandoned:
            log.warning("MLflow at %s reachable again after %.0f s; %d values delivered late",
                        redact_text(self.uri), time.monotonic() - self._failing_since, self._late)
        self._failing_since, self._failures, self._late = None, 0, 0

    def _drop(self, what: str, e: Exception) -> None:
        """The server rejected an item for good: retrying cannot help, the rest goes on."""
        self.dropped += 1
        if self.dropped <= common.MAX_DROP_WARNINGS:
            log.warning("MLflow rejected %s: %s; dropped, not retried (%d dropped so far%s)", what,
                        redact_text(str(e))[:300], self.dropped,
                        "; further rejections are only counted" if self.dropped == common.MAX_DROP_WARNINGS else "")

    def _send(self, items: list, request: Callable[[list], None], describe: Callable[[Any], str]) -> None:
        """Send items; on a permanent rejection, halve the batch until the bad item is found
        and drop only it. Re-sent good items are harmless (identical values are stored once)."""
        try:
            request(items)
        except Exception as e:  # noqa: BLE001
            if not is_permanent(e):
                raise
            if len(items) == 1 or run_gone(e):  # every item would fail alike: no halving
                for item in items:
                    self._drop(describe(item), e)
                return
            mid = len(items) // 2
            self._send(items[:mid], request, describe)
            self._send(items[mid:], request, describe)

    def _send_metrics(self, batch: list) -> None:
        def request(items):
            self._backend.log_metrics(self.run.run_id, items)
            if self._failing_since is not None:
                self._late += len(items)

        self._send(batch, request, lambda m: f"metric {m[0]!r} at step {m[3]}")

    def _apply(self, event: dict) -> None:
        run_id = self.run.run_id
        if "tags" in event:
            for k, v in event["tags"].items():
                self._send([(k, v)], lambda items: self._backend.set_tag(run_id, *items[0]),
                           lambda t: f"tag {t[0]!r}")
            return
        if "inputs" in event:
            self._send(event["inputs"], lambda items: self._backend.log_inputs(run_id, items),
                       lambda d: f"dataset {d['name']!r}")
            return
        path = Path(event["artifact"])
        if not path.exists():
            log.warning("artifact %s vanished before upload; skipped", path)
            return
        self._send([path], lambda _: self._backend.log_artifact(run_id, str(path), event.get("artifact_path")),
                   lambda p: f"artifact {p.name!r}")
        if event.get("staged"):
            shutil.rmtree(path.parent, ignore_errors=True)

    def _open_run(self) -> None:
        config, tags = self._start
        if self.run.run_id is None:
            self.run.experiment_id = self._backend.experiment_id(
                self.cfg.experiment, artifact_root(self.uri, self.cfg.experiment),
                {ui_tags.EXPERIMENT_KIND: ui_tags.MODEL_TRAINING})
            self.run.run_id = self._backend.create_run(self.run.experiment_id, self.cfg.run_name or config.get("name"))
            self._config_pending = True
            record_run(self.run_dir, self.run.run_id, self.run.experiment_id, self.uri)
        if self._config_pending:  # a failure half-way through is retried from here
            self._apply(tag_event(tags))
            self._log_config(config)
            self._config_pending = False
        elif not self.opened.is_set():
            # A resumed job may run on other nodes, another GPU count, another commit.
            run_id = self.run.run_id
            self._send([run_id], lambda _: self._backend.set_status(run_id, "RUNNING"), lambda r: f"reopening run {r}")
            self._apply(tag_event(tags))
        self._start = None
        self.opened.set()

    def _log_config(self, config: dict) -> None:
        """config is already redacted: params (dotted, truncated to MLflow's limit) + YAML artifact."""
        import yaml

        run_id = self.run.run_id
        params = [(clean_name(k)[:250], v[:common.MAX_PARAM_LEN]) for k, v in flatten(config).items()]
        for i in range(0, len(params), common.MAX_PARAMS_PER_BATCH):
            self._send(params[i:i + common.MAX_PARAMS_PER_BATCH], lambda items: self._backend.log_params(run_id, items),
                       lambda p: f"param {p[0]!r}")
        staged = self.outbox.new_dir() / "config.yaml"
        atomic.write_text(staged, redact_text(yaml.safe_dump(config, sort_keys=False)))
        self._apply({"artifact": str(staged), "artifact_path": None, "staged": True})

    def _terminate(self) -> None:
        try:
            self._backend.set_status(self.run.run_id, self.final_status)
        except Exception as e:  # noqa: BLE001
            log.warning("could not mark MLflow run %s %s: %s", self.run.run_id, self.final_status,
                        redact_text(str(e))[:200])
