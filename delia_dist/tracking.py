"""MLflow tracking that never stops training.

Rank 0 owns the run; other ranks hold a disabled tracker (every call a no-op).
The training thread only appends to an in-memory queue; one background thread does all
MLflow I/O (create/reopen the run, params, metrics, tags, artifacts). So a slow or dead
server costs the training loop nothing: values stay queued (spilled to
<run_dir>/mlflow-pending.jsonl past `max_queue`), the failure is warned about once, and
everything goes out when the server answers again. close() waits at most
`close_timeout_s`; whatever is still undelivered is kept in the spill file and sent by
the next Tracker on the same run directory. Redelivering a metric is harmless: MLflow
ignores an identical (key, value, timestamp, step).

The run id is part of the checkpoint (state_dict), so a requeued job continues the same
run with continuing step numbers.
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
from typing import Any

from .redact import redact, redact_text

log = logging.getLogger("delia.tracking")
MAX_PARAM_LEN = 6000       # MLflow's limit on a param value
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_TAG_LEN = 8000
STAGE_LIMIT = 256 << 20    # larger artifacts are uploaded from where they are, not copied
SCRUB_LIMIT = 16 << 20     # text artifacts up to this size are scrubbed of secrets

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


class Tracker:
    def __init__(self, cfg, run_dir: str | os.PathLike, enabled: bool = True):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.enabled = bool(enabled and cfg.enabled)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.last_step = -1
        self.retry_after_s = float(getattr(cfg, "retry_after_s", 15.0))
        self.flush_interval_s = float(getattr(cfg, "flush_interval_s", 2.0))
        self.close_timeout_s = float(getattr(cfg, "close_timeout_s", 30.0))
        self.max_queue = int(getattr(cfg, "max_queue", 20_000))
        self._spill = self.run_dir / "mlflow-pending.jsonl"
        self._outbox = self.run_dir / "mlflow-outbox"
        self._uri = ""
        self._client = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._metrics: deque = deque()       # (key, value, timestamp_ms, step)
        self._ops: deque = deque()           # {"tags": {...}} | {"artifact": path, "artifact_path": ..., "staged": bool}
        self._inflight: list = []            # metrics the sender holds right now
        self._pending_start: tuple | None = None
        self._opened = threading.Event()     # run created/reopened on the server
        self._failing_since: float | None = None
        self._abandoned = False
        self._started_sysmon = False
        self._config_pending = False
        self._stage_ids = itertools.count()

    # -- state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id")
        self.experiment_id = state.get("experiment_id")
        self.last_step = state.get("last_step", -1)

    # -- lifecycle -------------------------------------------------------------------
    def start(self, config: dict, tags: dict[str, Any] | None = None, wait_s: float | None = None) -> None:
        """Queue the run's creation (or reopening) and start the sender.

        Waits up to `wait_s` for the run id so callers usually have it at once (default 5 s
        for a server; 120 s for a local sqlite/file store, whose first use migrates the
        schema); a server that does not answer by then is retried in the background.
        """
        if not self.enabled:
            return
        # Short HTTP timeouts/retries bound how long the sender (and close) can hang on a
        # dead server; the MLflow defaults are 120 s per request and 7 retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(getattr(self.cfg, "http_timeout_s", 10)))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        from mlflow.tracking import MlflowClient

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._uri = default_uri(self.cfg, self.run_dir)
        self._client = MlflowClient(self._uri)
        self._pending_start = (redact(config), {k: str(v) for k, v in {**self.cfg.tags, **(tags or {})}.items()})
        self._load_spill()
        self._thread = threading.Thread(target=self._sender, name="delia-mlflow", daemon=True)
        self._thread.start()
        self._wake.set()
        local = self._uri.startswith(("sqlite:", "file:")) or "://" not in self._uri
        self._opened.wait(wait_s if wait_s is not None else (120.0 if local else 5.0))

    def close(self, status: str = "FINISHED") -> None:
        """Deliver what is queued (waiting at most close_timeout_s) and end the run."""
        if not self.enabled or self._thread is None:
            return
        self._final_status = status
        self._stop.set()
        self._wake.set()
        self._thread.join(self.close_timeout_s)
        with self._lock:
            self._abandoned = self._thread.is_alive()
            left = list(self._inflight) + list(self._metrics) if self._abandoned else list(self._metrics)
            ops = list(self._ops)
            self._metrics.clear()
            self._ops.clear()
            self._write_spill(left, ops)
        self._thread = None
        if left or ops:
            log.warning("MLflow at %s: %d metric values and %d tag/artifact updates not delivered; kept in "
                        "%s and sent by the next run in this directory", redact_text(self._uri), len(left),
                        len(ops), self._spill)

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
            if len(self._metrics) > self.max_queue:
                self._write_spill(list(self._metrics), [])
                self._metrics.clear()
        if len(self._metrics) >= MAX_METRICS_PER_BATCH:
            self._wake.set()

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = redact({clean_name(str(k)): str(v)[:MAX_TAG_LEN] for k, v in tags.items()})
        with self._lock:
            self._ops.append({"tags": clean})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file or directory; text is scrubbed of secrets on a staged copy first."""
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
                                                      or self._spill.exists())
            if idle:
                return True
            self._wake.set()
            time.sleep(0.05)
        return False

    # -- staging ----------------------------------------------------------------------
    def _stage_dir(self) -> Path:
        d = self._outbox / f"{os.getpid()}-{next(self._stage_ids)}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _stage(self, path: Path, artifact_path: str | None) -> dict:
        size = path.stat().st_size
        if size > STAGE_LIMIT:
            return {"artifact": str(path), "artifact_path": artifact_path, "staged": False}
        staged = self._stage_dir() / path.name
        data = path.read_bytes()
        if size <= SCRUB_LIMIT:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text is not None:
                data = redact_text(text).encode("utf-8")
        staged.write_bytes(data)
        return {"artifact": str(staged), "artifact_path": artifact_path, "staged": True}

    # -- spill file -------------------------------------------------------------------
    def _write_spill(self, metrics: list, ops: list) -> None:
        """Caller holds the lock."""
        if not metrics and not ops:
            return
        self._spill.parent.mkdir(parents=True, exist_ok=True)
        with open(self._spill, "a") as f:
            for m in metrics:
                f.write(json.dumps(list(m)) + "\n")
            for op in ops:
                f.write(json.dumps(op) + "\n")

    def _load_spill(self) -> None:
        """What an earlier tracker here could not deliver goes out first."""
        if not self._spill.is_file():
            return
        metrics, ops, bad = [], [], 0
        for line in self._spill.read_text().splitlines():
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
        with self._lock:
            self._metrics.extendleft(reversed(metrics))
            self._ops.extendleft(reversed(ops))
            self._spill.unlink()
            if len(self._metrics) > self.max_queue:
                self._write_spill(list(self._metrics), [])
                self._metrics.clear()

    # -- sender thread ------------------------------------------------------------------
    def _sender(self) -> None:
        next_try = 0.0
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            if stopping or time.monotonic() >= next_try:
                try:
                    self._deliver()
                    if self._failing_since is not None:
                        log.warning("MLflow reachable again after %.0f s; queued values delivered",
                                    time.monotonic() - self._failing_since)
                        self._failing_since = None
                except Exception as e:  # noqa: BLE001 - any failure: keep training, retry later
                    self._note_failure(e)
                    next_try = time.monotonic() + self.retry_after_s
                    if stopping:
                        return
            if stopping:
                if self._failing_since is None and self.run_id is not None:
                    self._terminate()
                return

    def _note_failure(self, e: Exception) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("MLflow at %s failed (%s); training continues, values are queued and retried "
                        "every %.0f s", redact_text(self._uri), redact_text(str(e))[:300], self.retry_after_s)

    def _deliver(self) -> None:
        if self._pending_start is not None:
            self._open_run()
        if self._spill.exists():  # overflow written while the server was down
            self._load_spill()
        while True:
            with self._lock:
                if self._abandoned:
                    return
                if self._ops:
                    op = self._ops[0]
                elif self._metrics:
                    op = None
                    n = min(MAX_METRICS_PER_BATCH, len(self._metrics))
                    self._inflight = [self._metrics.popleft() for _ in range(n)]
                else:
                    return
            if op is not None:
                self._apply(op)
                with self._lock:
                    if self._ops and self._ops[0] is op:
                        self._ops.popleft()
                continue
            from mlflow.entities import Metric
            try:
                self._client.log_batch(self.run_id, metrics=[Metric(*m) for m in self._inflight])
            except Exception:
                with self._lock:
                    if not self._abandoned:
                        self._metrics.extendleft(reversed(self._inflight))
                    self._inflight = []
                raise
            with self._lock:
                self._inflight = []

    def _apply(self, op: dict) -> None:
        if "tags" in op:
            for k, v in op["tags"].items():
                self._client.set_tag(self.run_id, k, v)
            return
        path = Path(op["artifact"])
        if not path.exists():
            log.warning("artifact %s vanished before upload; skipped", path)
            return
        self._client.log_artifact(self.run_id, str(path), op.get("artifact_path"))
        if op.get("staged"):
            shutil.rmtree(path.parent, ignore_errors=True)

    def _open_run(self) -> None:
        config, tags = self._pending_start
        if self.run_id is None:
            self.experiment_id = self._experiment_id()
            name = self.cfg.run_name or config.get("name")
            run = self._client.create_run(self.experiment_id, run_name=name, tags=redact(tags))
            self.run_id, self._config_pending = run.info.run_id, True
        if self._config_pending:  # a failure half-way through is retried from here
            self._log_config(config)
            self._config_pending = False
        elif not self._opened.is_set():
            self._client.update_run(self.run_id, status="RUNNING")
            # A resumed job may run on other nodes, another GPU count, another commit.
            from mlflow.entities import RunTag
            current = [RunTag(clean_name(k), v[:MAX_TAG_LEN]) for k, v in redact(tags).items()]
            for i in range(0, len(current), 100):
                self._client.log_batch(self.run_id, tags=current[i:i + 100])
        self._pending_start = None
        self._opened.set()
        if getattr(self.cfg, "system_metrics", False) and not self._started_sysmon:
            self._started_sysmon = True
            threading.Thread(target=self._sample_system, name="delia-sysmetrics", daemon=True).start()

    def _experiment_id(self) -> str:
        exp = self._client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self._uri.startswith(("sqlite:", "file:")) or "://" not in self._uri:
            location = (self.run_dir / "mlartifacts").resolve().as_uri()
        return self._client.create_experiment(self.cfg.experiment, artifact_location=location)

    def _log_config(self, config: dict) -> None:
        """config is already redacted: params (dotted, truncated to MLflow's limit) + YAML artifact."""
        import yaml
        from mlflow.entities import Param

        params = [Param(clean_name(k)[:250], v[:MAX_PARAM_LEN]) for k, v in flatten(config).items()]
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS_PER_BATCH])
        staged = self._stage_dir() / "config.yaml"
        staged.write_text(yaml.safe_dump(config, sort_keys=False))
        self._apply({"artifact": str(staged), "artifact_path": None, "staged": True})

    def _terminate(self) -> None:
        try:
            self._client.set_terminated(self.run_id, status=getattr(self, "_final_status", "FINISHED"))
        except Exception as e:  # noqa: BLE001
            log.warning("could not mark MLflow run %s finished: %s", self.run_id, redact_text(str(e))[:200])

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
        interval = float(getattr(self.cfg, "system_metrics_interval_s", 30.0))
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
