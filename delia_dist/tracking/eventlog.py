"""The local, append-only record of everything a Tracker was asked to send.

<run_dir>/mlflow-events.jsonl holds one JSON event per line, in call order:
  {"m": [[key, value, timestamp_ms, step], ...]}      metric values of one log_metrics call
  {"tags": {...}}                                      a tag update
  {"artifact": path, "artifact_path": ..., "staged": bool}
<run_dir>/mlflow-events.cursor holds the byte offset up to which the sender has
delivered. Producers (the training thread) only put events on an in-memory queue; one
writer thread appends them, so the training thread never waits on the disk and memory
stays bounded however long the server is away. What is past the cursor when a job ends
is sent, first and in order, by the next Tracker on the same run directory.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
from pathlib import Path

from .. import atomic, storage

log = logging.getLogger("delia.tracking")


class EventLog:
    def __init__(self, run_dir: Path, on_write=lambda: None):
        self.path = Path(run_dir) / "mlflow-events.jsonl"
        self.cursor_path = Path(run_dir) / "mlflow-events.cursor"
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.on_write = on_write
        self._thread: threading.Thread | None = None
        self.size = 0               # bytes of complete lines on disk
        self._failing = False

    # -- producers: memory only --------------------------------------------------------
    def put(self, event: dict) -> None:
        self._queue.put(event)

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until everything put so far is on disk."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    # -- writer thread ------------------------------------------------------------------
    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._trim_partial_line()
        self.size = self.path.stat().st_size if self.path.exists() else 0
        self._thread = threading.Thread(target=self._write_loop, name="delia-mlflow-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> bool:
        """Write what is queued and stop the writer; False if the disk did not keep up."""
        if self._thread is None:
            return True
        self._queue.put(None)
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        self._thread = None
        return not alive

    def _trim_partial_line(self) -> None:
        """A crash mid-append leaves a line without its newline: cut it, or the next
        append would glue a valid event onto it."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            content = f.read()
            f.truncate(content.rfind(b"\n") + 1)
        log.warning("%s: cut an incomplete last line (written by a job that crashed)", self.path)

    def _write_loop(self) -> None:
        pending: list[bytes] = []
        waiters: list[threading.Event] = []
        stop = False
        while True:
            try:  # block until there is work; after a failed append, retry within a second
                item = self._queue.get(timeout=1.0 if pending else None)
                while True:
                    if item is None:
                        stop = True
                    elif isinstance(item, threading.Event):
                        waiters.append(item)
                    else:
                        pending.append(json.dumps(item, separators=(",", ":")).encode() + b"\n")
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            if pending:
                self._append(pending)
            if not pending or stop:
                for w in waiters:
                    w.set()
                waiters.clear()
            if stop:
                if pending:
                    log.warning("%d tracking events could not be written to %s and are lost", len(pending), self.path)
                return

    def _append(self, lines: list[bytes]) -> None:
        try:
            with open(self.path, "ab") as f:
                f.write(b"".join(lines))
        except OSError as e:
            if not self._failing:
                log.warning("%s; tracking events are held in memory until it works",
                            storage.explain(e, f"the tracking event log {self.path.name}", self.path.parent))
            self._failing = True
            return
        self._failing = False
        self.size += sum(len(line) for line in lines)
        lines.clear()
        self.on_write()

    # -- cursor (sender side) ------------------------------------------------------------
    def load_cursor(self) -> int:
        try:
            offset = int(self.cursor_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            log.warning("%s is unreadable; the events in %s are sent again from the start (MLflow stores "
                        "an identical value once)", self.cursor_path, self.path)
            return 0
        return offset if 0 <= offset <= self.size else 0

    def save_cursor(self, offset: int) -> None:
        # Rewritten after every batch sent; a cursor lost to a power cut only resends events
        # (MLflow stores an identical value once), so no fsync: atomic rename only.
        atomic.write_text(self.cursor_path, str(offset), durable=False)

    def read_batch(self, offset: int, max_metrics: int) -> tuple[list[dict], int, int]:
        """Events from `offset`: one non-metric event, or consecutive metric events with
        at most about max_metrics values. Returns (events, end offset, unreadable lines
        skipped); a last line still being written is left for later."""
        events: list[dict] = []
        bad, n_metrics, end = 0, 0, offset
        if offset >= self.size:
            return events, end, bad
        with open(self.path, "rb") as f:
            f.seek(offset)
            while end < self.size:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break
                try:
                    event = json.loads(line)
                    ok = isinstance(event, dict) and any(k in event for k in ("m", "tags", "inputs", "artifact"))
                except ValueError:
                    ok = False
                if not ok:
                    bad += 1
                    end += len(line)
                    continue
                if "m" not in event:
                    if not events:
                        events, end = [event], end + len(line)
                    break
                events.append(event)
                end += len(line)
                n_metrics += len(event["m"])
                if n_metrics >= max_metrics:
                    break
        return events, end, bad

    def undelivered(self, offset: int) -> tuple[int, int]:
        """(metric values, other events) past offset, for the message at close."""
        n_metrics = n_other = 0
        while offset < self.size:
            events, end, _ = self.read_batch(offset, 1 << 30)
            if end == offset:
                break
            for e in events:
                if "m" in e:
                    n_metrics += len(e["m"])
                else:
                    n_other += 1
            offset = end
        return n_metrics, n_other

    def remove(self) -> None:
        """Everything was delivered: the next job starts with an empty log."""
        self.path.unlink(missing_ok=True)
        self.cursor_path.unlink(missing_ok=True)
        self.size = 0
