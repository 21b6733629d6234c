"""`delia train`'s torchrun: a failed worker's one line is not buried under torchrun's report."""
from __future__ import annotations

import os
import subprocess
import sys

from portutil import free_port


def _run(tmp_path, debug: bool):
    script = tmp_path / "worker.py"
    script.write_text("import os, sys\nprint(f'[rank {os.environ[\"RANK\"]}] error: shard missing', "
                      "file=sys.stderr)\nsys.exit(3)\n")
    env = {k: v for k, v in os.environ.items() if k != "DELIA_DEBUG"}
    if debug:
        env["DELIA_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "launcher.torchrun", "--nproc_per_node=2", "--nnodes=1",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script)],
                          capture_output=True, text=True, timeout=300, env=env)


def test_worker_failure_is_one_line_per_rank_and_a_summary(tmp_path):
    p = _run(tmp_path, debug=False)
    assert p.returncode == 1
    assert "[rank 0] error: shard missing" in p.stderr and "[rank 1] error: shard missing" in p.stderr
    assert "[delia] 2 rank(s) exited with [3]" in p.stderr
    assert "ChildFailedError" not in p.stderr and "Traceback" not in p.stderr


def test_debug_shows_torchruns_report(tmp_path):
    p = _run(tmp_path, debug=True)
    assert p.returncode != 0 and "ChildFailedError" in p.stderr
