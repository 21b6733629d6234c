"""A real `mlflow server` on loopback that a test can stop and start again."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from portutil import free_port

from delia_dist.health import wait_healthy


class MlflowServer:
    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.proc = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        mlflow = Path(sys.executable).parent / "mlflow"
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.root}/server.db",
             "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=open(self.root / "server.log", "a"), stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false"}, start_new_session=True)
        wait_healthy(f"{self.uri}/health", timeout, alive=lambda: self.proc.poll() is None,
                     log=self.root / "server.log")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server
    server.stop()
