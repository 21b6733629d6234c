"""Webdataset-compatible tar shards: writing (ShardWriter) and safe reading (iter_shard).

A sample is three tar members sharing a key: `<key>.json` (the record, so it can be
re-tokenized), `<key>.ids` (token ids, raw little-endian int32) and `<key>.mask` (loss
mask, raw uint8). Raw bytes, never pickle: a shard is untrusted input, and reading is
np.frombuffer on the member bytes.
"""
from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np

from .. import atomic, storage
from ..urls import is_url
from .errors import DataError, RecordError
from .records import to_messages, tokenize_messages, tokenizer_info

MANIFEST = "manifest.json"
SAMPLE_MEMBERS = {"json", "ids", "mask"}
FORMAT = "delia-shards/1"


class ShardWriter:
    """Tokenize records and write them into tar shards of about max_shard_bytes each.

    `with ShardWriter(out_dir, tokenizer) as w: w.write(record)`; on close it writes
    out_dir/manifest.json (shards, samples, tokens, tokenizer fingerprint). write()
    raises RecordError (with .reason) for a record it cannot use; nothing is written then.
    """

    def __init__(self, out_dir, tokenizer, max_shard_bytes: int = 256 << 20, prefix: str = "shard"):
        if "." in prefix or "/" in prefix:
            raise ValueError(f"prefix must not contain '.' or '/': {prefix!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer, self.max_shard_bytes, self.prefix = tokenizer, max_shard_bytes, prefix
        self.info = tokenizer_info(tokenizer)
        self.shards: list[dict] = []
        self.samples = self.tokens = self.loss_tokens = 0
        self._tar = None
        self._current: dict | None = None

    def write(self, record: dict) -> int:
        """Write one record; returns its token count."""
        ids, mask = tokenize_messages(self.tokenizer, to_messages(record))
        try:
            payload = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as e:
            raise RecordError("bad_record", f"record is not JSON-serializable: {e}") from None
        return self.write_tokenized(payload, ids, mask)

    def write_tokenized(self, record_json: bytes, ids: np.ndarray, mask: np.ndarray) -> int:
        with storage.writing("data shards", self.out_dir):
            return self._write_tokenized(record_json, ids, mask)

    def _write_tokenized(self, record_json: bytes, ids: np.ndarray, mask: np.ndarray) -> int:
        if self._tar is None:
            self._open()
        cur = self._current
        key = f"{self.prefix}{len(self.shards) - 1:06d}_{cur['samples']:08d}"
        for ext, data in (("json", record_json), ("ids", np.asarray(ids, dtype="<i4").tobytes()),
                          ("mask", np.asarray(mask, dtype=np.uint8).tobytes())):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        n = int(len(ids))
        cur["samples"] += 1
        cur["tokens"] += n
        self.samples += 1
        self.tokens += n
        self.loss_tokens += int(np.count_nonzero(mask))
        if self._tar.fileobj.tell() >= self.max_shard_bytes:
            self._close_shard()
        return n

    def _open(self):
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._current = {"path": name, "samples": 0, "tokens": 0}
        self.shards.append(self._current)
        self._tmp = self.out_dir / (name + ".tmp")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)

    def _close_shard(self):
        self._tar.close()
        self._current["bytes"] = self._tmp.stat().st_size
        atomic.fsync_path(self._tmp)
        atomic.replace(self._tmp, self.out_dir / self._current["path"])
        self._tar = None

    def close(self) -> dict:
        """Finish the last shard and write the manifest atomically; returns the manifest.

        A set whose samples carry no loss token would train on nothing (a chat template
        whose assistant spans were not found): it is refused, its shards removed."""
        with storage.writing("data shards", self.out_dir):
            return self._close()

    def _close(self) -> dict:
        if self._tar is not None:
            self._close_shard()
        if self.samples and not self.loss_tokens:
            self.discard()
            raise DataError(f"{self.out_dir}: none of the {self.samples} samples ({self.tokens} tokens) has "
                            f"a loss token: the chat template of {self.info['name_or_path'] or 'the tokenizer'} "
                            "marked no assistant reply; no manifest written")
        manifest = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "shards": self.shards, "samples": self.samples, "tokens": self.tokens,
                    "loss_tokens": self.loss_tokens, "tokenizer": self.info}
        atomic.write_text(self.out_dir / MANIFEST, json.dumps(manifest, indent=1))
        return manifest

    def discard(self) -> None:
        """Remove every shard this writer wrote (a refused set leaves nothing behind)."""
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = None
        for shard in self.shards:
            (self.out_dir / shard["path"]).unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif self._tar is not None:
            try:  # closing flushes the tar's end blocks: on a full disk that fails too
                self._tar.close()
            except OSError:
                pass
            self._tar = None
            self._tmp.unlink(missing_ok=True)


def open_url(url: str):
    """A binary stream for a local path or any URL webdataset's gopen takes (pipe:, http...)."""
    if url.startswith("file:"):
        url = url[5:]
    if not is_url(url):
        try:
            return open(url, "rb", buffering=1 << 20)
        except OSError as e:
            raise DataError(f"{url}: cannot open shard: {e.strerror or e}") from None
    from webdataset.gopen import gopen
    try:
        return gopen(url, "rb")
    except Exception as e:  # noqa: BLE001 - any opener failure is reported with the URL
        raise DataError(f"{url}: cannot open shard: {e}") from None


class _Prefixed:
    """A read()-able stream with bytes already taken from its front put back."""

    def __init__(self, head: bytes, f):
        self.head, self.f = head, f

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.f.read(n)
        if n < 0:
            out, self.head = self.head + self.f.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out + (self.f.read(n - len(out)) if len(out) < n else b"")


def _read_exact(f, n: int, what: str) -> bytes:
    data = f.read(n)
    while len(data) < n:
        more = f.read(n - len(data))
        if not more:
            raise EOFError(f"unexpected end of data in {what} ({len(data)} of {n} bytes)")
        data += more
    return data


def _tar_members(f):
    """(name, bytes) of each regular member. Our own reader rather than tarfile's stream mode,
    which ends quietly at a garbled header: a truncated shard must be an error here, so
    the archive has to end with its zero end-of-archive block."""
    long_name = None
    while True:
        block = f.read(512)
        if len(block) < 512:
            block += _read_exact(f, 512 - len(block), "a tar header") if block else b""
            if not block:
                raise EOFError("archive ends without its end-of-archive block (truncated?)")
        if block == _ZERO_BLOCK:
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as e:
            raise tarfile.ReadError(f"bad tar header after member {long_name!r}: {e}") from None
        name = long_name or info.name
        long_name = None
        data = _read_exact(f, info.size, f"member {name!r}")
        if info.size % 512:
            _read_exact(f, 512 - info.size % 512, f"padding of member {name!r}")
        if info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif info.type == tarfile.XHDTYPE:
            long_name = _pax_path(data)
        elif info.type in tarfile.REGULAR_TYPES:
            yield name, data


_ZERO_BLOCK = bytes(512)


def _pax_path(data: bytes):
    """The 'path' record of a pax extended header ("<len> path=<value>\n" records), if any."""
    pos = 0
    while pos < len(data):
        length = int(data[pos:data.index(b" ", pos)])
        record = data[pos:pos + length]
        key, _, value = record.split(b" ", 1)[1].partition(b"=")
        if key == b"path":
            return value[:-1].decode("utf-8", "surrogateescape")
        pos += length
    return None


def iter_shard(url: str, skip: int = 0):
    """Yield (key, {ext: bytes}) per sample of a tar shard (plain or gzip), in member order,
    after skipping the first `skip` samples. Members are only read as bytes: nothing is
    extracted to disk and nothing is unpickled. Raises DataError naming the shard and the
    member where reading failed (truncated tar, bad gzip, failing pipe), after yielding the
    sample read just before the failure if it has every member its predecessor had (a
    sample is only known complete when the next one starts, or when the archive ends)."""
    stream = open_url(url)
    last = "<start>"
    key, parts, exts, index, prev_exts = None, {}, set(), 0, None
    error = None
    try:
        head = stream.read(2)
        f = _Prefixed(head, stream)
        if head == b"\x1f\x8b":
            f = gzip.GzipFile(fileobj=f, mode="rb")
        for name, data in _tar_members(f):
            last = name
            k, _, ext = name.rsplit("/", 1)[-1].partition(".")
            if k != key:
                if key is not None:
                    if index >= skip:
                        yield key, parts
                    index += 1
                    prev_exts = exts
                key, parts, exts = k, {}, set()
            exts.add(ext)
            if index >= skip:
                parts[ext] = data
        if key is not None and index >= skip:
            yield key, parts
        last = "<end>"
        stream.close()  # a pipe: reports its command's exit status here
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as e:
        error = DataError(f"{url}: corrupt or unreadable shard near member {last!r}: "
                          f"{type(e).__name__}: {e}")
    finally:
        try:
            stream.close()
        except (OSError, ValueError):
            pass
    if error is not None:
        if key is not None and index >= skip and last != "<end>" and exts >= (prev_exts or SAMPLE_MEMBERS):
            yield key, parts
        raise error


def load_manifest(path: str) -> dict:
    """Read a manifest (local path or URL); shard paths become URLs next to it."""
    try:
        with open_url(path) as f:
            manifest = json.loads(f.read())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a valid manifest JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "shards" not in manifest:
        raise DataError(f"{path}: not a delia shard manifest (format {FORMAT!r})")
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    for shard in manifest["shards"]:
        shard["url"] = shard["path"] if "://" in shard["path"] or shard["path"].startswith("/") \
            else f"{base}/{shard['path']}"
    return manifest
