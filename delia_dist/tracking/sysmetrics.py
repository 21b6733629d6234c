"""CPU/memory/disk/network (and NVIDIA GPU with pynvml) samples as ordinary metrics.

mlflow's own monitor stops for good at the first failed request; this one only queues
values on the tracker, so an outage delays system metrics and loses none."""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("delia.tracking")


def sample_system(stop: threading.Event, interval_s: float, emit: Callable[[dict], None]) -> None:
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
    while not stop.wait(interval_s):
        values = {}
        for source in sources:
            try:
                source.collect_metrics()
                values.update(source.aggregate_metrics())
                source.clear_metrics()
            except Exception:  # noqa: BLE001 - one failing probe must not stop the others
                continue
        if values:
            emit({f"system/{k}": v for k, v in values.items()})
