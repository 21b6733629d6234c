"""MLflow tracking that never stops training.

Rank 0 owns the run; other ranks hold a disabled tracker (every call a no-op).
The training thread only appends to an in-memory queue (and, past `max_queue` values,
to <run_dir>/mlflow-pending.jsonl); one background thread does all MLflow I/O: it
creates or reopens the run, sends batches, retries transient failures (connection
errors, timeouts, 429, 5xx) with backoff, and drops what the server rejects for good
(4xx) with a counted warning instead of retrying it forever. An outage is warned about
once when it starts and once when it ends. close() waits at most `close_timeout_s`;
what is still undelivered is kept in the spill file and sent, first and in order, by
the next Tracker on the same run directory (the run id comes back through
state_dict/load_state_dict). A value sent twice (a request that timed out after the
server applied it) is stored once: MLflow ignores an identical (key, value, timestamp, step).

Order of delivery, oldest first: `_backlog` (sender-owned: a failed batch or a loaded
spill file), the spill file, then the in-memory queue.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from .redact import env_secrets, redact, redact_text

log = logging.getLogger("delia.tracking")
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


def is_permanent(e: Exception) -> bool:
    """A 4xx answer (bad value, changed param, deleted run) fails the same way every time;
    408/429/499 and everything else (connection errors, timeouts, 5xx) may pass later."""
    from mlflow.exceptions import MlflowException

    if not isinstance(e, MlflowException):
        return False
    status = e.get_http_status_code()
    return 400 <= status < 500 and status not in (408, 429, 499)


def _tag_op(tags: dict[str, Any]) -> dict:
    """A queued tag update: MLflow-safe keys, values cut to MLflow's limit, secrets masked."""
    return {"tags": redact({clean_name(str(k)): str(v)[:MAX_TAG_LEN] for k, v in tags.items()})}


class _RunRefused(Exception):
    """A 4xx while creating or reopening the run: without a run nothing can be sent."""


def run_gone(e: Exception) -> bool:
    """404 (no such run) or 400 for a deleted run: the whole batch fails, not one item."""
    return e.get_http_status_code() == 404 or "must be in the 'active' state" in str(e)


def scrub_copy(src: Path, dst: Path) -> None:
    """Copy a text artifact line by line through redact_text, so size does not matter."""
    secrets = env_secrets()
    with open(src, encoding="utf-8", errors="replace", newline="") as fin, \
            open(dst, "w", encoding="utf-8", newline="") as fout:
        for line in fin:
            fout.write(redact_text(line, secrets))


class Tracker:
    def __init__(self, cfg, run_dir: str | os.PathLike, enabled: bool = True):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.enabled = bool(enabled and cfg.enabled)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.last_step = -1
        self.dropped = 0                     # items the server rejected for good (4xx)
        self._spill = self.run_dir / "mlflow-pending.jsonl"
        self._outbox = self.run_dir / "mlflow-outbox"
        self._uri = ""
        self._client = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._metrics: deque = deque()       # (key, value, timestamp_ms, step), newest
        self._backlog: deque = deque()       # oldest: a failed batch or a loaded spill file
        self._inflight: list = []            # the batch being sent now
        self._ops: deque = deque()           # {"tags": {...}} | {"artifact": path, "artifact_path": ..., "staged": bool}
        self._pending_start: tuple | None = None
        self._opened = threading.Event()     # run created/reopened on the server
        self._failing_since: float | None = None
        self._failures = 0
        self._late = 0                       # values delivered during the current outage
        self._abandoned = False
        self._started_sysmon = False
        self._config_pending = False
        self._final_status = "FINISHED"
        self._stage_ids = itertools.count()

    # -- state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id")
        self.experiment_id = state.get("experiment_id")
        self.last_step = state.get("last_step", -1)
        if self.run_id is None and self.enabled:
            # The checkpoint was written before the server answered and the run existed; the
            # sender noted the run it created later in the run directory: continue that one
            # instead of splitting the job over two runs.
            recorded = self._recorded_run()
            if recorded and recorded.get("uri") == redact_text(default_uri(self.cfg, self.run_dir)):
                self.run_id, self.experiment_id = recorded.get("run_id"), recorded.get("experiment_id")
                log.info("checkpoint has no MLflow run id (saved before the run was created); continuing "
                         "run %s recorded in %s", self.run_id, self._run_file)

    @property
    def _run_file(self) -> Path:
        return self.run_dir / "mlflow-run.json"

    def _record_run(self) -> None:
        """The created run's id, beside the checkpoints (atomic write), for load_state_dict."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = self._run_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"run_id": self.run_id, "experiment_id": self.experiment_id,
                                       "uri": redact_text(self._uri)}))
            os.replace(tmp, self._run_file)
        except OSError as e:
            log.warning("could not record MLflow run id in %s: %s", self._run_file, e)

    def _recorded_run(self) -> dict | None:
        if not self._run_file.is_file():
            return None
        try:
            recorded = json.loads(self._run_file.read_text())
            if isinstance(recorded, dict):
                return recorded
        except (OSError, ValueError):
            pass
        log.warning("%s is unreadable; the resumed job starts a new MLflow run", self._run_file)
        return None

    # -- lifecycle -------------------------------------------------------------------
    def start(self, config: dict, tags: dict[str, Any] | None = None, wait_s: float | None = None) -> None:
        """Queue the run's creation (or reopening) and start the sender.

        For a local sqlite/file store (no network) it waits up to `wait_s` (default 120 s:
        the first use migrates the schema) so callers have the run id at once; for a server
        it does not wait by default: the sender creates the run whenever the server answers.
        """
        if not self.enabled:
            return
        # Short HTTP timeouts/retries bound how long one request holds the sender (and so
        # how much close() can deliver); the MLflow defaults are 120 s and 7 retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(self.cfg.http_timeout_s))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        from mlflow.tracking import MlflowClient

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._uri = default_uri(self.cfg, self.run_dir)
        self._client = MlflowClient(self._uri)
        self._pending_start = (redact(config), {k: str(v) for k, v in {**self.cfg.tags, **(tags or {})}.items()})
        self._thread = threading.Thread(target=self._sender, name="delia-mlflow", daemon=True)
        self._thread.start()
        self._wake.set()
        wait = wait_s if wait_s is not None else (120.0 if self._local() else 0.0)
        if wait > 0:
            self._opened.wait(wait)

    def close(self, status: str = "FINISHED") -> None:
        """Deliver what is queued (waiting at most close_timeout_s), end the run, spill the rest."""
        if not self.enabled or self._thread is None:
            return
        self._final_status = status
        self._stop.set()
        self._wake.set()
        self._thread.join(self.cfg.close_timeout_s)
        with self._lock:
            # A sender still inside a request is abandoned: whatever it holds goes to disk,
            # and it touches nothing once it returns.
            self._abandoned = self._thread.is_alive()
            front = (self._inflight if self._abandoned else []) + list(self._backlog)
            n_metrics, n_ops = self._rewrite_spill(front, list(self._ops))
            self._inflight, self._backlog, self._metrics, self._ops = [], deque(), deque(), deque()
        self._thread = None
        if n_metrics or n_ops:
            log.warning("MLflow at %s: not delivered within close_timeout_s=%.1f s: %d metric values and %d "
                        "tag/artifact updates%s, kept in %s; the next Tracker on this run directory sends them",
                        redact_text(self._uri), self.cfg.close_timeout_s, n_metrics, n_ops,
                        "" if self._opened.is_set() else " (the run was never created)", self._spill)

    # -- logging (training thread: never touches the network) ----------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            try:
                items.append((clean_name(str(k)), float(v), now, int(step)))
            except (TypeError, ValueError):
                log.warning("metric %s=%r is not a number; not logged", k, v)
        with self._lock:
            self._metrics.extend(items)
            self.last_step = max(self.last_step, int(step))
            if len(self._metrics) > self.cfg.max_queue:  # memory stays bounded during an outage
                self._append_spill(self._metrics, [])
                self._metrics.clear()
            full = len(self._metrics) >= MAX_METRICS_PER_BATCH
        if full:
            self._wake.set()

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.enabled:
            return
        op = _tag_op(tags)
        with self._lock:
            self._ops.append(op)

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
            op = self._stage(path, artifact_path)
        except OSError as e:
            log.warning("artifact %s not logged: %s", path, e)
            return
        with self._lock:
            self._ops.append(op)

    def log_figure(self, fig, name: str) -> None:
        if not self.enabled:
            return
        staged = self._stage_dir() / name
        fig.savefig(staged, dpi=120, bbox_inches="tight")
        with self._lock:
            self._ops.append({"artifact": str(staged), "artifact_path": "plots", "staged": True})

    def log_table(self, rows: list[dict], name: str) -> None:
        """rows as JSONL under tables/<name> (secrets scrubbed)."""
        if not self.enabled:
            return
        staged = self._stage_dir() / name
        staged.write_text("".join(json.dumps(redact(r), ensure_ascii=False, default=str) + "\n" for r in rows))
        with self._lock:
            self._ops.append({"artifact": str(staged), "artifact_path": "tables", "staged": True})

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything queued so far is delivered; False if that took too long."""
        if not self.enabled or self._thread is None:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                idle = self._opened.is_set() and not (self._metrics or self._ops or self._inflight
                                                      or self._backlog or self._spill.exists())
            if idle:
                return True
            self._wake.set()
            time.sleep(0.05)
        return False

    # -- staging ----------------------------------------------------------------------
    def _local(self) -> bool:
        return self._uri.startswith(("sqlite:", "file:")) or "://" not in self._uri

    def _stage_dir(self) -> Path:
        d = self._outbox / f"{os.getpid()}-{next(self._stage_ids)}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _stage(self, path: Path, artifact_path: str | None) -> dict:
        """A copy the caller may delete or rewrite at once; text goes through redact_text."""
        text = path.suffix.lower() in TEXT_SUFFIXES
        if not text and path.stat().st_size > STAGE_LIMIT:
            return {"artifact": str(path), "artifact_path": artifact_path, "staged": False}
        staged = self._stage_dir() / path.name
        if text:
            scrub_copy(path, staged)
        else:
            shutil.copyfile(path, staged)
        return {"artifact": str(staged), "artifact_path": artifact_path, "staged": True}

    # -- spill file (callers hold the lock) ---------------------------------------------
    def _append_spill(self, metrics, ops, path: Path | None = None) -> None:
        path = path or self._spill
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.writelines(json.dumps(list(m)) + "\n" for m in metrics)
            f.writelines(json.dumps(op) + "\n" for op in ops)

    def _read_spill(self) -> tuple[list, list]:
        metrics, ops, bad = [], [], 0
        if not self._spill.is_file():
            return metrics, ops
        with open(self._spill) as f:
            for line in f:
                try:
                    item = json.loads(line)
                    if isinstance(item, list):
                        k, v, ts, s = item
                        metrics.append((str(k), float(v), int(ts), int(s)))
                    elif isinstance(item, dict) and ("tags" in item or "artifact" in item):
                        ops.append(item)
                    else:
                        bad += 1
                except (ValueError, TypeError):
                    bad += 1  # a line cut short by a crash
        if bad:
            log.warning("%s: skipped %d unreadable lines", self._spill, bad)
        return metrics, ops

    def _rewrite_spill(self, front_metrics: list, front_ops: list) -> tuple[int, int]:
        """Spill file := front + its current content + the in-memory queue, in that order."""
        old_metrics, old_ops = self._read_spill()
        metrics = [*front_metrics, *old_metrics, *self._metrics]
        ops = [*old_ops, *front_ops]
        if not metrics and not ops:
            self._spill.unlink(missing_ok=True)
            return 0, 0
        tmp = self._spill.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        self._append_spill(metrics, ops, tmp)
        os.replace(tmp, self._spill)  # a crash leaves the old file or the new one, never half
        return len(metrics), len(ops)

    # -- sender thread ------------------------------------------------------------------
    def _sender(self) -> None:
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
                                "are kept and spilled to %s at close", redact_text(self._uri),
                                redact_text(str(e.__cause__))[:300], self._spill)
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
                if self._failing_since is None and self.run_id is not None and not self._abandoned:
                    self._terminate()
                return

    def _note_failure(self, e: Exception) -> None:
        self._failures += 1
        if self._failing_since is None and not self._abandoned:
            self._failing_since = time.monotonic()
            log.warning("MLflow at %s unreachable (%s); training continues, values are queued and retried "
                        "with backoff from %.1f s", redact_text(self._uri), redact_text(str(e))[:300],
                        self.cfg.retry_after_s)

    def _note_success(self) -> None:
        if self._failing_since is not None and not self._abandoned:
            log.warning("MLflow at %s reachable again after %.0f s; %d values delivered late",
                        redact_text(self._uri), time.monotonic() - self._failing_since, self._late)
        self._failing_since, self._failures, self._late = None, 0, 0

    def _drop(self, what: str, e: Exception) -> None:
        """The server rejected an item for good: retrying cannot help, the rest goes on."""
        self.dropped += 1
        if self.dropped <= MAX_DROP_WARNINGS:
            log.warning("MLflow rejected %s: %s; dropped, not retried (%d dropped so far%s)", what,
                        redact_text(str(e))[:300], self.dropped,
                        "; further rejections are only counted" if self.dropped == MAX_DROP_WARNINGS else "")

    def _deliver(self) -> None:
        if self._pending_start is not None:
            try:
                self._open_run()
            except Exception as e:  # noqa: BLE001
                if is_permanent(e):
                    raise _RunRefused() from e
                raise
        while True:
            with self._lock:
                if self._abandoned:
                    return
                op = self._ops[0] if self._ops else None
                if op is None:
                    if not self._backlog and self._spill.exists():
                        metrics, ops = self._read_spill()  # older than anything in memory
                        self._spill.unlink()
                        self._backlog.extend(metrics)
                        self._ops.extendleft(reversed(ops))
                        continue
                    source = self._backlog or self._metrics
                    if not source:
                        return
                    self._inflight = [source.popleft() for _ in range(min(MAX_METRICS_PER_BATCH, len(source)))]
            if op is not None:
                self._apply(op)
                with self._lock:
                    if self._ops and self._ops[0] is op:
                        self._ops.popleft()
                continue
            try:
                self._send_metrics(self._inflight)
            except Exception:
                with self._lock:
                    if not self._abandoned:  # the oldest values: they go first next time
                        self._backlog.extendleft(reversed(self._inflight))
                    self._inflight = []
                raise
            with self._lock:
                self._inflight = []

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
        from mlflow.entities import Metric

        def request(items):
            self._client.log_batch(self.run_id, metrics=[Metric(*m) for m in items])
            if self._failing_since is not None:
                self._late += len(items)

        self._send(batch, request, lambda m: f"metric {m[0]!r} at step {m[3]}")

    def _apply(self, op: dict) -> None:
        if "tags" in op:
            for k, v in op["tags"].items():
                self._send([(k, v)], lambda items: self._client.set_tag(self.run_id, *items[0]),
                           lambda t: f"tag {t[0]!r}")
            return
        path = Path(op["artifact"])
        if not path.exists():
            log.warning("artifact %s vanished before upload; skipped", path)
            return
        self._send([path], lambda items: self._client.log_artifact(self.run_id, str(path), op.get("artifact_path")),
                   lambda p: f"artifact {p.name!r}")
        if op.get("staged"):
            shutil.rmtree(path.parent, ignore_errors=True)

    def _open_run(self) -> None:
        config, tags = self._pending_start
        if self.run_id is None:
            self.experiment_id = self._experiment_id()
            run = self._client.create_run(self.experiment_id, run_name=self.cfg.run_name or config.get("name"))
            self.run_id, self._config_pending = run.info.run_id, True
            self._record_run()
        if self._config_pending:  # a failure half-way through is retried from here
            self._apply(_tag_op(tags))
            self._log_config(config)
            self._config_pending = False
        elif not self._opened.is_set():
            # A resumed job may run on other nodes, another GPU count, another commit.
            self._send([self.run_id], lambda _: self._client.update_run(self.run_id, status="RUNNING"),
                       lambda r: f"reopening run {r}")
            self._apply(_tag_op(tags))
        self._pending_start = None
        self._opened.set()
        if self.cfg.system_metrics and not self._started_sysmon:
            self._started_sysmon = True
            threading.Thread(target=self._sample_system, name="delia-sysmetrics", daemon=True).start()

    def _experiment_id(self) -> str:
        exp = self._client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self._local():
            location = (self.run_dir / "mlartifacts").resolve().as_uri()
        return self._client.create_experiment(self.cfg.experiment, artifact_location=location)

    def _log_config(self, config: dict) -> None:
        """config is already redacted: params (dotted, truncated to MLflow's limit) + YAML artifact."""
        import yaml
        from mlflow.entities import Param

        params = [Param(clean_name(k)[:250], v[:MAX_PARAM_LEN]) for k, v in flatten(config).items()]
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self._send(params[i:i + MAX_PARAMS_PER_BATCH],
                       lambda items: self._client.log_batch(self.run_id, params=items), lambda p: f"param {p.key!r}")
        staged = self._stage_dir() / "config.yaml"
        staged.write_text(redact_text(yaml.safe_dump(config, sort_keys=False)))
        self._apply({"artifact": str(staged), "artifact_path": None, "staged": True})

    def _terminate(self) -> None:
        try:
            self._client.set_terminated(self.run_id, status=self._final_status)
        except Exception as e:  # noqa: BLE001
            log.warning("could not mark MLflow run %s %s: %s", self.run_id, self._final_status,
                        redact_text(str(e))[:200])

    def _sample_system(self) -> None:
        """mlflow's own monitor stops for good at the first failed request; this one feeds
        the buffered queue, so an outage only delays system metrics."""
        try:
            from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
            from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
            from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
            sources = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        except Exception as e:  # noqa: BLE001 - psutil missing or an mlflow API change
            log.warning("system metrics disabled: %s", e)
            return
        try:
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
            sources.append(GPUMonitor())
        except Exception:  # noqa: BLE001 - no NVIDIA GPU or no pynvml: CPU-side metrics only
            pass
        interval = self.cfg.system_metrics_interval_s
        while not self._stop.wait(interval):
            values = {}
            for source in sources:
                try:
                    source.collect_metrics()
                    values.update(source.aggregate_metrics())
                    source.clear_metrics()
                except Exception:  # noqa: BLE001 - one failing probe must not stop the others
                    continue
            if values:
                self.log_metrics({f"system/{k}": v for k, v in values.items()}, max(self.last_step, 0))
