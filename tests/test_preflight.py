"""`delia preflight`: each check passes on a good setup and fails, with one line naming what
to change, on the setup that would stop a 70B job in its first minutes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from delia_dist import preflight
from delia_dist.cli import main
from delia_dist.config import load_config
from delia_dist.plan import plan

REPO = Path(__file__).resolve().parents[1]


def cfg(name, *overrides):
    return load_config(REPO / "configs" / name, list(overrides), check_paths=False)


def one_line(f: preflight.Finding) -> str:
    line = f.line()
    assert "\n" not in line
    return line


def test_attention_flash_attn_not_installed_names_sdpa():
    assert preflight.attention(cfg("llama3_70b.yaml")).ok
    bad = preflight.attention(cfg("llama3_70b.yaml", "model.attn_implementation=flash_attention_2"))
    assert not bad.ok and "model.attn_implementation: sdpa" in one_line(bad)


def test_deepspeed_adam_without_prebuilt_op_names_torch_adam():
    ok = preflight.deepspeed_ops(cfg("llama3_70b.yaml"))
    assert ok.ok and "no compiled op" in ok.message
    bad = preflight.deepspeed_ops(cfg("llama3_70b.yaml", "deepspeed.adam_fused=false", "deepspeed.torch_adam=false"))
    assert not bad.ok and "deepspeed.torch_adam: true" in one_line(bad) and "fused_adam" in bad.message


@pytest.fixture
def model_dir(tmp_path, tiny_tokenizer_dir, tiny_model_config):
    d = tmp_path / "model"
    shutil.copytree(tiny_tokenizer_dir, d)
    (d / "config.json").write_text(json.dumps(tiny_model_config))
    (d / "model.safetensors").write_bytes(b"\0" * 1024)
    return d


def test_model_and_tokenizer_with_end_of_turn(model_dir):
    found = preflight.model_and_tokenizer(cfg("smollm2_cpu.yaml", f"model.name_or_path={model_dir}",
                                              "model.tokenizer=null"))
    assert [f.check for f in found] == ["model", "tokenizer"] and all(f.ok for f in found), found
    assert "end-of-turn token <|end|>" in found[1].message


def test_model_dir_without_weights_fails(model_dir):
    (model_dir / "model.safetensors").unlink()
    found = preflight.model_and_tokenizer(cfg("smollm2_cpu.yaml", f"model.name_or_path={model_dir}"))
    assert not found[0].ok and "weight files" in one_line(found[0])


def test_tokenizer_without_chat_template_or_end_of_turn_fails(model_dir):
    conf = json.loads((model_dir / "tokenizer_config.json").read_text())
    conf.pop("chat_template", None)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(conf))
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    c = cfg("smollm2_cpu.yaml", f"model.name_or_path={model_dir}")
    bad = preflight.model_and_tokenizer(c)[-1]
    assert not bad.ok and "no chat template" in one_line(bad)
    # A template whose assistant turn ends in plain text: the model would never learn to stop.
    (model_dir / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}: {% if m['role'] == 'assistant' %}{% generation %}"
        "{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}")
    bad = preflight.model_and_tokenizer(c)[-1]
    assert not bad.ok and "never learns to stop" in one_line(bad)


def test_tokenizer_that_does_not_load_is_one_line(tmp_path):
    bad = preflight.model_and_tokenizer(cfg("smollm2_cpu.yaml", f"model.name_or_path={tmp_path}",
                                            f"model.tokenizer={tmp_path / 'nope'}"))
    assert not bad[-1].ok and "model.tokenizer" in one_line(bad[-1])


def test_disk_needs_a_checkpoint_plus_the_universal_copy(tmp_path):
    small = cfg("smollm2_cpu.yaml", f"checkpoint.dir={tmp_path}/ckpt")
    ok = preflight.disk(small, plan(small, nodes=1, gpus_per_node=2))
    assert ok.ok and str(tmp_path) in ok.message
    big = cfg("llama3_70b.yaml", f"checkpoint.dir={tmp_path}/ckpt")  # ~1.8 TB: more than this disk
    bad = preflight.disk(big, plan(big, nodes=8, gpus_per_node=8))
    assert not bad.ok and "1,835" in bad.message and "checkpoint.dir" in one_line(bad)


def test_timeouts_against_the_plans_save_and_step():
    p = plan(cfg("llama3_70b.yaml"), nodes=8, gpus_per_node=8, gpu="h100-80gb")
    found = preflight.timeouts(p, {}, 600, step_known=True)
    assert [f.ok for f in found] == [True] and "save ~198 s" in found[0].message
    late = preflight.timeouts(p, {}, 120, step_known=True)
    assert not late[-1].ok and "--signal=B:USR1@N" in one_line(late[-1])
    short = preflight.timeouts(p, {"DELIA_DIST_TIMEOUT": "30"}, 600, step_known=True)
    assert not short[-1].ok and "DELIA_DIST_TIMEOUT=30" in one_line(short[-1])
    assert not preflight.timeouts(p, {"DELIA_DIST_TIMEOUT": "10m"}, 600, step_known=True)[0].ok


NAMES = ["eth0", "ib0", "ib1", "lo"]


@pytest.mark.parametrize("var,value,ok", [
    ("NCCL_SOCKET_IFNAME", "ib", True), ("NCCL_SOCKET_IFNAME", "^lo,docker0", True),
    ("NCCL_SOCKET_IFNAME", "=ib0,ib1", True), ("NCCL_SOCKET_IFNAME", "mlx", False),
    ("NCCL_SOCKET_IFNAME", "^e,i,l", False), ("NCCL_SOCKET_IFNAME", "=ib", False),
    ("GLOO_SOCKET_IFNAME", "eth0", True), ("GLOO_SOCKET_IFNAME", "eth0,ib2", False)])
def test_interface_settings_name_interfaces_that_exist(var, value, ok):
    found = {f.message.split("=")[0].split()[0]: f for f in preflight.interfaces({var: value}, NAMES)}
    assert found[var].ok is ok, found[var]
    if not ok:
        assert f"export {var}" in one_line(found[var]) and "eth0, ib0, ib1, lo" in found[var].message


def test_cli_exits_nonzero_only_when_strict(monkeypatch, capsys, tmp_path):
    args = ["preflight", str(REPO / "configs/llama3_70b.yaml"), "--set", f"checkpoint.dir={tmp_path}",
            "--set", "model.attn_implementation=flash_attention_2"]
    monkeypatch.delenv("DELIA_PREFLIGHT", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "FAIL attention" in out and "DELIA_PREFLIGHT=strict stops here" in out
    monkeypatch.setenv("DELIA_PREFLIGHT", "strict")
    assert main(args) == 1
    assert "strict: stopping" in capsys.readouterr().out
