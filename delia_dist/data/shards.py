"""Webdataset-compatible tar shards: writing (ShardWriter) and safe reading (iter_shard).

A sample is three tar members sharing a key: `<key>.json` (the record, so it can be
re-tokenized), `<key>.ids` (token ids, raw little-endian int32) and `<key>.mask` (loss
mask, raw uint8). Raw bytes, never pickle: a shard is untrusted input, and reading is
np.frombuffer on the member bytes.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError
from .records import to_messages, tokenize_messages, tokenizer_info

MANIFEST = "manifest.json"
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
        payload = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        return self.write_tokenized(payload, ids, mask)

    def write_tokenized(self, record_json: bytes, ids: np.ndarray, mask: np.ndarray) -> int:
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
        os.replace(self._tmp, self.out_dir / self._current["path"])
        self._tar = None

    def close(self) -> dict:
        """Finish the last shard and write the manifest atomically; returns the manifest."""
        if self._tar is not None:
            self._close_shard()
        manifest = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "shards": self.shards, "samples": self.samples, "tokens": self.tokens,
                    "loss_tokens": self.loss_tokens, "tokenizer": self.info}
        tmp = self.out_dir / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.out_dir / MANIFEST)
        return manifest

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)


def open_url(url: str):
    """A binary stream for a local path or any URL webdataset's gopen takes (pipe:, http...)."""
    if url.startswith("file:"):
        url = url[5:]
    if "://" not in url and not url.startswith("pipe:"):
        try:
            return open(url, "rb")
        except OSError as e:
            raise DataError(f"{url}: cannot open shard: {e.strerror or e}") from None
    from webdataset.gopen import gopen
    try:
        return gopen(url, "rb")
    except Exception as e:  # noqa: BLE001 - any opener failure is reported with the URL
        raise DataError(f"{url}: cannot open shard: {e}") from None


def iter_shard(url: str, skip: int = 0):
    """Yield (key, {ext: bytes}) per sample of a tar shard (plain or gzip), in member order,
    after skipping the first `skip` samples. Members are only read as bytes: nothing is
    extracted to disk and nothing is unpickled. Raises DataError naming the shard and the
    member where reading failed (truncated tar, bad gzip, failing pipe)."""
    stream = open_url(url)
    last = "<start>"
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")
        key, parts, index = None, {}, 0
        for member in tar:
            last = member.name
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            k, _, ext = base.partition(".")
            if k != key:
                if key is not None:
                    if index >= skip:
                        yield key, parts
                    index += 1
                key, parts = k, {}
            parts[ext] = tar.extractfile(member).read() if index >= skip else b""
        if key is not None and index >= skip:
            yield key, parts
        last = "<end>"
        stream.close()  # a pipe: reports its command's exit status here
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as e:
        raise DataError(f"{url}: corrupt or unreadable shard near member {last!r}: "
                        f"{type(e).__name__}: {e}") from None
    finally:
        try:
            stream.close()
        except (OSError, ValueError):
            pass


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
