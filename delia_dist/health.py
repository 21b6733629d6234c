"""Wait until a server we started answers on its /health endpoint (vLLM, MLflow).

One loop for the tests, the benchmarks and scripts/main.sh: it gives up as soon as the
server's process has died (with the tail of its log in the message) instead of polling a
dead port until the timeout. Standard library only, so any environment can run it:
    python -m delia_dist.health URL [--timeout S] [--pid PID] [--log FILE]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable


class ServerNotReady(RuntimeError):
    """The server exited, or did not answer 200 on /health within the timeout."""


def pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie (exited, not yet reaped by its parent) counts as dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def _tail(log: str | os.PathLike | None, n: int = 3000) -> str:
    if log is None:
        return ""
    try:
        return ":\n" + Path(log).read_text(errors="replace")[-n:]
    except OSError:
        return f" (log {log} unreadable)"


def wait_healthy(url: str, timeout_s: float = 120.0, *, alive: Callable[[], bool] | None = None,
                 log: str | os.PathLike | None = None, interval_s: float = 0.5) -> None:
    """Return once GET `url` answers 200; raise ServerNotReady when `alive()` turns false
    or after timeout_s. `url` is the full health URL (http://127.0.0.1:PORT/health)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if alive is not None and not alive():
            raise ServerNotReady(f"server for {url} exited before answering" + _tail(log))
        if time.monotonic() >= deadline:
            raise ServerNotReady(f"{url} did not answer within {timeout_s:.0f} s" + _tail(log))
        time.sleep(interval_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m delia_dist.health", description=__doc__.split("\n")[0])
    p.add_argument("url", help="health URL, e.g. http://127.0.0.1:8000/health")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")
    p.add_argument("--pid", type=int, default=None, help="the server's process: stop waiting once it is gone")
    p.add_argument("--log", default=None, help="the server's log, whose tail is printed on failure")
    args = p.parse_args(argv)
    try:
        wait_healthy(args.url, args.timeout, alive=(lambda: pid_alive(args.pid)) if args.pid else None,
                     log=args.log, interval_s=1.0)
    except ServerNotReady as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
