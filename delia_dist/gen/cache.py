"""On-disk cache of endpoint responses keyed by the request, so a rerun or a crash never
pays for the same request twice. Writes go through atomic.open_for_write: a crash
mid-write leaves either the old entry or none, never a torn one."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .. import atomic


def request_key(request: dict) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # unreadable entry: ask again rather than trust it
            return None

    def put(self, key: str, value: Any) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.open_for_write(path, "w") as f:
            json.dump(value, f, ensure_ascii=False)
