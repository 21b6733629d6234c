"""How long collectives may wait while weights or a checkpoint move through the filesystem:
the arithmetic of `delia plan` (plan/checkpoint.py) on this run's real parameter counts, so
a 1 TB save at a few GB/s does not trip the job's collective timeout."""
from __future__ import annotations

import logging

from ..plan import PlanError, architecture
from ..plan.checkpoint import io_bound_s, io_bytes

log = logging.getLogger(__name__)


def model_load_s(cfg) -> float:
    """Bound for from_pretrained + resize: the weights read once (0 when the shape is unknown,
    which leaves the job's own timeout)."""
    try:
        n = architecture(cfg.model).total_params()
    except PlanError:
        return 0.0
    w_bytes = 4 if cfg.model.dtype == "float32" or cfg.train.precision == "fp32" else 2
    return io_bound_s(n * w_bytes, cfg.checkpoint.fs_bandwidth_gbps)


def checkpoint_s(module, cfg) -> float:
    """Bound for one save or load of `module` (ZeRO-3 parameters counted whole)."""
    n = trainable = 0
    for p in module.parameters():
        count = getattr(p, "ds_numel", p.numel())
        n += count
        trainable += count if p.requires_grad else 0
    nbytes = io_bytes(n, trainable, cfg.train.precision in ("bf16", "fp16"))
    bound = io_bound_s(nbytes, cfg.checkpoint.fs_bandwidth_gbps)
    log.info("checkpoint I/O: up to %.0f GB per save or load at %g GB/s; collectives wait up to %.0f s there "
             "(or the job's timeout, if longer)", nbytes / 1e9, cfg.checkpoint.fs_bandwidth_gbps, bound)
    return bound
