"""MLflow tracking that never stops training.

Rank 0 owns the run; other ranks hold a disabled tracker. Metrics are queued and sent
in batches; when the server is down or slow, they stay queued (spilled to
<run_dir>/mlflow-pending.jsonl past a bound) and go out once it answers again, with one
warning instead of one per step. The run id is part of the checkpoint, so a requeued
job continues the same run with continuing step numbers.
"""
from __future__ import annotations

import json
import logging
import re
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .redact import redact, redact_text

log = logging.getLogger("delia.tracking")
MAX_PARAM_LEN = 6000
MAX_QUEUE = 10_000
RETRY_AFTER_S = 10.0  # class default; tests shorten it per tracker


_BAD_NAME = re.compile(r"[^\w\-. :/]")


def clean_name(name: str) -> str:
    """MLflow keys allow only [A-Za-z0-9_-. :/]; '<sep>' becomes '_sep_'."""
    return _BAD_NAME.sub("_", name)


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        for i, v in enumerate(d):
            name = v.get("name", i) if isinstance(v, dict) else i
            out.update(flatten(v, f"{prefix}.{name}"))
    else:
        out[prefix] = json.dumps(d) if isinstance(d, (list, dict)) else str(d)
    return out


def default_uri(cfg, run_dir: Path) -> str:
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(run_dir).resolve()}/mlflow.db"


class Tracker:
    def __init__(self, cfg, run_dir: str | os.PathLike, enabled: bool = True):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.enabled = enabled and cfg.enabled
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.last_step = -1
        self._client = None
        self._queue: list[tuple[str, float, int, int]] = []
        self._spill = self.run_dir / "mlflow-pending.jsonl"
        self._failing_since: float | None = None
        self._next_try = 0.0
        self._warned = False
        self._sysmon = None
        self._pending_start = None
        self._uri = ""
        self.retry_after_s = RETRY_AFTER_S

    # -- state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id")
        self.experiment_id = state.get("experiment_id")
        self.last_step = state.get("last_step", -1)

    # -- lifecycle -------------------------------------------------------------------
    def start(self, config: dict, tags: dict[str, str] | None = None) -> None:
        if not self.enabled:
            return
        # Short timeouts: a dead server must cost seconds, not the default minutes per call.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        import mlflow
        from mlflow.tracking import MlflowClient

        self.run_dir.mkdir(parents=True, exist_ok=True)
        uri = default_uri(self.cfg, self.run_dir)
        previous = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)  # for the system-metrics monitor's own client
        if previous is None:  # set_tracking_uri exports the variable; keep it from leaking
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
        self._uri = uri
        self._pending_start = (config, tags)
        self._client = MlflowClient(uri)
        self._try_start()

    def _try_start(self) -> bool:
        """Create (or reopen) the run; on failure training goes on and we retry later."""
        if self._pending_start is None:
            return True
        if time.monotonic() < self._next_try:
            return False
        config, tags = self._pending_start
        try:
            if self.run_id is None:
                self.experiment_id = self._experiment_id(self._uri)
                run = self._client.create_run(self.experiment_id, run_name=self.cfg.run_name or config.get("name"),
                                              tags={**redact(self.cfg.tags), **redact(tags or {})})
                self.run_id = run.info.run_id
                self._log_config(config)
            else:
                self._client.update_run(self.run_id, status="RUNNING")
                for k in ("restart_count", "world_size", "nodes"):
                    if tags and k in tags:
                        self._client.set_tag(self.run_id, k, str(tags[k]))
        except Exception as e:
            self._note_failure(e)
            return False
        self._pending_start = None
        if self.cfg.system_metrics:
            self._start_system_metrics()
        self._replay_spill()
        return True

    def _note_failure(self, e: Exception) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning("MLflow at %s failed (%s); training continues, metrics are queued and "
                        "retried every %.0f s", redact_text(self._uri), redact_text(str(e))[:300], self.retry_after_s)
        self._next_try = time.monotonic() + self.retry_after_s

    def _experiment_id(self, uri: str) -> str:
        exp = self._client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if uri.startswith("sqlite:") or uri.startswith("file:"):
            location = (self.run_dir / "mlartifacts").resolve().as_uri()
        return self._client.create_experiment(self.cfg.experiment, artifact_location=location)

    def _log_config(self, config: dict) -> None:
        from mlflow.entities import Param
        import yaml

        clean = redact(config)
        params = [Param(clean_name(k), v[:MAX_PARAM_LEN]) for k, v in flatten(clean).items()]
        for i in range(0, len(params), 100):
            self._client.log_batch(self.run_id, params=params[i:i + 100])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(clean, sort_keys=False))
            self._client.log_artifact(self.run_id, str(path))

    def _start_system_metrics(self) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
            self._sysmon = SystemMetricsMonitor(self.run_id, sampling_interval=10, samples_before_logging=1)
            self._sysmon.start()
        except Exception as e:  # psutil missing or API change: training goes on
            log.warning("system metrics disabled: %s", e)

    def close(self, status: str = "FINISHED") -> None:
        if not self.enabled or self._client is None:
            return
        if self._sysmon is not None:
            try:
                self._sysmon.finish()
            except Exception:
                pass
        self._next_try = 0.0
        self._flush()
        if self._pending_start is not None:
            self._spill_queue()
            log.warning("MLflow never answered; metrics kept in %s", self._spill)
            return
        try:
            self._client.set_terminated(self.run_id, status=status)
        except Exception as e:
            log.warning("could not mark MLflow run %s %s: %s", self.run_id, status, e)
        if self._queue:
            self._spill_queue()
            log.warning("%d metric values not delivered; kept in %s and sent at the next start",
                        len(self._spill_lines()), self._spill)

    # -- logging ---------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        self._queue.extend((clean_name(k), float(v), now, int(step)) for k, v in metrics.items())
        self.last_step = max(self.last_step, step)
        if len(self._queue) > MAX_QUEUE:
            self._spill_queue()
        self._flush()

    def _flush(self) -> None:
        if not self._queue or self._client is None or time.monotonic() < self._next_try:
            return
        if not self._try_start():
            return
        from mlflow.entities import Metric
        try:
            while self._queue:
                batch = self._queue[:1000]
                self._client.log_batch(self.run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in batch])
                del self._queue[:len(batch)]
            if self._failing_since is not None:
                log.warning("MLflow reachable again after %.0f s; queued metrics delivered",
                            time.monotonic() - self._failing_since)
                self._failing_since = None
        except Exception as e:
            self._note_failure(e)

    def _spill_queue(self) -> None:
        self._spill.parent.mkdir(parents=True, exist_ok=True)
        with open(self._spill, "a") as f:
            for item in self._queue:
                f.write(json.dumps(item) + "\n")
        self._queue.clear()

    def _spill_lines(self) -> list:
        if not self._spill.is_file():
            return []
        return [json.loads(line) for line in self._spill.read_text().splitlines() if line.strip()]

    def _replay_spill(self) -> None:
        items = self._spill_lines()
        if items:
            self._queue[:0] = [tuple(i) for i in items]
            self._spill.unlink()
            self._flush()

    def set_tags(self, tags: dict[str, Any]) -> None:
        if not self.enabled or self._client is None or not self._try_start():
            return
        try:
            for k, v in redact({k: str(v) for k, v in tags.items()}).items():
                self._client.set_tag(self.run_id, k, v)
        except Exception as e:
            log.warning("MLflow set_tags failed: %s", redact_text(str(e))[:200])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self.enabled or self._client is None or not self._try_start():
            return
        try:
            self._client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as e:
            log.warning("MLflow artifact %s not logged: %s", path, redact_text(str(e))[:200])

    def log_figure(self, fig, name: str) -> None:
        if not self.enabled or self._client is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            fig.savefig(path, dpi=120, bbox_inches="tight")
            self.log_artifact(path, "plots")

    def log_table(self, rows: list[dict], name: str) -> None:
        if not self.enabled or self._client is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text("\n".join(json.dumps(redact(r), ensure_ascii=False) for r in rows) + "\n")
            self.log_artifact(path, "tables")
