"""Tracking section (MLflow)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from .errors import ConfigValueError


@dataclass
class TrackingConfig:
    enabled: bool = True
    # null: $MLFLOW_TRACKING_URI if set, else an sqlite store in the run directory.
    uri: Optional[str] = None
    experiment: str = "delia"
    run_name: Optional[str] = None
    log_every: int = 10
    # CPU/memory/disk/network (and NVIDIA GPU with pynvml) sampled every
    # system_metrics_interval_s, logged like training metrics (through the event log).
    system_metrics: bool = True
    system_metrics_interval_s: float = 30.0
    tags: dict[str, str] = field(default_factory=dict)
    # The MLflow run this run is a child of (the UI nests it there); `delia experiment` sets
    # it to the matrix's parent run. A run id: 32 hex characters.
    parent_run_id: Optional[str] = None
    # Delivery runs in a background thread; these bound what a slow or dead server costs.
    flush_interval_s: float = 2.0
    retry_after_s: float = 15.0      # wait after a failed request before trying again
    http_timeout_s: int = 10         # per tracking request to a server (not MLFLOW_HTTP_REQUEST_TIMEOUT)
    close_timeout_s: float = 30.0    # at close: what is not delivered by then stays in the event log

    REMOVED: ClassVar[dict[str, str]] = {
        "max_queue": "every value now goes to <run_dir>/mlflow-events.jsonl as it is logged; "
                     "nothing waits in memory"}

    def validate(self) -> None:
        if self.log_every < 1:
            raise ConfigValueError("log_every", "must be >= 1")
        for name in ("flush_interval_s", "retry_after_s", "system_metrics_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigValueError(name, "must be > 0 seconds")
        if self.http_timeout_s < 1:
            raise ConfigValueError("http_timeout_s", "must be >= 1 second")
        if self.parent_run_id is not None and not re.fullmatch(r"[0-9a-f]{32}", self.parent_run_id):
            raise ConfigValueError("parent_run_id", f"must be an MLflow run id (32 hex characters), "
                                                    f"got {self.parent_run_id!r}")
        if self.close_timeout_s < 0:
            raise ConfigValueError("close_timeout_s", "must be >= 0 seconds")
