"""Tracking section (MLflow)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .errors import ConfigValueError


@dataclass
class TrackingConfig:
    enabled: bool = True
    # null: $MLFLOW_TRACKING_URI if set, else an sqlite store in the run directory.
    uri: Optional[str] = None
    experiment: str = "delia"
    run_name: Optional[str] = None
    log_every: int = 10
    system_metrics: bool = True
    tags: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.log_every < 1:
            raise ConfigValueError("log_every", "must be >= 1")
