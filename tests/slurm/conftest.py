"""One real Slurm cluster per test session (starting it takes seconds; jobs take longer),
and one tiny DELIA workspace that every job trains on."""
from __future__ import annotations

import signal

import pytest
from cluster import SlurmCluster, unavailable_reason


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"real Slurm unavailable: {reason}")
    # `timeout pytest ...` ends with TERM: as an interrupt it still runs the teardown below,
    # instead of leaving daemons and training jobs on the machine.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A directory where configs/tiny_cpu.yaml's relative paths (runs/tiny/...) resolve."""
    from delia_dist.data.synth import prepare_workspace
    root = tmp_path_factory.mktemp("slurm-ws")
    prepare_workspace(root / "runs" / "tiny", n_train=80, n_eval=8, n_diverse=600)
    return root
