"""One free-port helper for every test directory (tests/ is put on sys.path by tests/conftest.py)."""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now; the OS picks it (another process may still take it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
