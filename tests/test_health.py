"""wait_healthy: returns once /health answers 200, and stops waiting at once (with the
server's log) when the server's process is gone, instead of polling a dead port."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from portutil import free_port

from delia_dist.health import ServerNotReady, main, pid_alive, wait_healthy


@pytest.fixture
def warming_server():
    """Answers 503 to its first two /health requests, then 200 (a server still loading)."""
    calls = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            calls.append(self.path)
            self.send_response(200 if len(calls) > 2 else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/health", calls
    server.shutdown()


def test_waits_through_503_until_200(warming_server):
    url, calls = warming_server
    wait_healthy(url, 30, interval_s=0.05)
    assert calls == ["/health"] * 3
    assert main([url, "--timeout", "5"]) == 0


def test_dead_server_fails_fast_with_its_log(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("Traceback ...\nOSError: address already in use\n")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(ServerNotReady, match="exited before answering(.|\n)*address already in use"):
        wait_healthy(f"http://127.0.0.1:{free_port()}/health", 300, alive=lambda: proc.poll() is None, log=log)


def test_timeout_names_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/health"
    with pytest.raises(ServerNotReady, match=f"{url} did not answer within 0 s"):
        wait_healthy(url, 0.2, interval_s=0.05)


def test_cli_sees_an_unreaped_child_as_dead(tmp_path, capsys):
    """scripts/main.sh starts the server with `&` and never reaps it: its exit leaves a zombie
    that still answers kill(pid, 0)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 60
    while pid_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(proc.pid)  # exited, not reaped: a zombie
    assert main([f"http://127.0.0.1:{free_port()}/health", "--timeout", "300", "--pid", str(proc.pid)]) == 1
    assert "exited before answering" in capsys.readouterr().err
    proc.wait()
    assert pid_alive(os.getpid())
