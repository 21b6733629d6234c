"""One real Slurm cluster per test session (starting it takes seconds; jobs take longer),
and one tiny DELIA workspace that every job trains on."""
from __future__ import annotations

import pytest

from cluster import SlurmCluster, unavailable_reason


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"real Slurm unavailable: {reason}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A directory where configs/tiny_cpu.yaml's relative paths (runs/tiny/...) resolve."""
    from delia_dist.synth import prepare_workspace
    root = tmp_path_factory.mktemp("slurm-ws")
    prepare_workspace(root / "runs" / "tiny", n_train=80, n_eval=8, n_diverse=600)
    return root
