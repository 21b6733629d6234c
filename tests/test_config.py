"""Config loading: every shipped config resolves, and each kind of mistake gets a message
that names the file, line and key."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from delia_dist.config import Config, ConfigError, config_from_dict, load_config, to_dict

CONFIGS = ["configs/tiny_cpu.yaml", "configs/llama3_8b.yaml", "configs/llama3_70b.yaml"]


def write(tmp_path, text: str, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = textwrap.dedent("""\
    model:
      name_or_path: meta-llama/Meta-Llama-3-8B
    data:
      sources:
        - name: diverse
          shards: /data/d/manifest.json
          weight: 0.75
        - name: downstream
          shards: /data/t/manifest.json
          weight: 0.25
    """)


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_load(repo_root, path):
    cfg = load_config(repo_root / path)
    assert isinstance(cfg, Config)
    assert abs(sum(s.weight for s in cfg.data.sources) - 1) < 1e-9
    assert cfg.deepspeed.stage == 3


def test_override_and_roundtrip(repo_root):
    cfg = load_config(repo_root / "configs/llama3_70b.yaml",
                      ["train.lr=1e-5", "data.sources.diverse.weight=0.9",
                       "data.sources.downstream.weight=0.1", "checkpoint.keep_last=5"])
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert [s.weight for s in cfg.data.sources] == [0.9, 0.1]
    assert cfg.checkpoint.keep_last == 5
    assert config_from_dict(to_dict(cfg)) == cfg


def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    path = write(tmp_path, BASE + "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and ":12:" in msg
    assert "train.lrr" in msg and "did you mean 'lr'" in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"trian: unknown key; did you mean 'train'"):
        load_config(write(tmp_path, BASE + "trian:\n  lr: 0.1\n"))


def test_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match=r":12: train.micro_batch_size: expected an integer, got 'four'"):
        load_config(write(tmp_path, BASE + "train:\n  micro_batch_size: four\n"))
    with pytest.raises(ConfigError, match=r"train.lr: expected a number, got 'fast'"):
        load_config(write(tmp_path, BASE), ["train.lr=fast"])
    with pytest.raises(ConfigError,
                       match=r"train.precision: expected one of .*'bf16'.* got 'bf61' \(did you mean 'bf16'\?\)"):
        load_config(write(tmp_path, BASE), ["train.precision=bf61"])


def test_missing_required_value(tmp_path):
    path = write(tmp_path, BASE.replace("      weight: 0.25\n", ""))
    with pytest.raises(ConfigError, match=r"data.sources.1.weight: missing required value \(float\)"):
        load_config(path)


def test_proportions_must_sum_to_one(tmp_path):
    path = write(tmp_path, BASE.replace("0.25", "0.5"))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "data.sources: weights must sum to 1, got 1.25 (diverse=0.75, downstream=0.5)" in str(e.value)
    assert f"{path}:4:" in str(e.value)


def test_path_that_does_not_exist(tmp_path):
    text = BASE.replace("meta-llama/Meta-Llama-3-8B", str(tmp_path / "no-model"))
    text = text.replace("/data/", f"{tmp_path}/data/")
    path = write(tmp_path, text)
    load_config(path)  # paths are only required when the config is used
    with pytest.raises(ConfigError, match=r"model.name_or_path: path does not exist: .*no-model"):
        load_config(path, check_paths=True)
    (tmp_path / "no-model").mkdir()
    with pytest.raises(ConfigError, match=r"cfg.yaml:\d+: data.sources.0.shards: no shards at .*/data/d/manifest.json"):
        load_config(path, check_paths=True)
    for d in ("d", "t"):
        (tmp_path / "data" / d).mkdir(parents=True)
        (tmp_path / "data" / d / "manifest.json").write_text("{}")
    load_config(path, check_paths=True)


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg.yaml:3: invalid YAML"):
        load_config(write(tmp_path, "a: 1\nb: [1, 2\nc: 3\n"))


def test_bad_override_syntax_and_list_names(tmp_path):
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(write(tmp_path, BASE), ["train.lr"])
    with pytest.raises(ConfigError, match=r"no item named 'divers'; names are \['diverse', 'downstream'\]"):
        load_config(write(tmp_path, BASE), ["data.sources.divers.weight=1"])


def test_missing_file():
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config("nope.yaml")


def test_deepspeed_render_zero3():
    cfg = load_config(None, ["model.name_or_path=x/y", "data.sources=[{name: a, shards: s, weight: 1}]",
                             "train.micro_batch_size=2", "train.grad_accum=4", "deepspeed.torch_adam=true"])
    t = cfg.train
    ds = cfg.deepspeed.render(micro_batch_size=t.micro_batch_size, grad_accum=t.grad_accum, world_size=8,
                              precision="bf16", lr=t.lr, betas=t.betas, eps=t.eps,
                              weight_decay=t.weight_decay, grad_clip=t.grad_clip)
    assert ds["train_batch_size"] == 64
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] is True
    assert ds["optimizer"]["params"]["torch_adam"] is True


def test_adam_fused_reaches_torch_adamw_and_needs_torch_adam():
    base = ["model.name_or_path=x/y", "data.sources=[{name: a, shards: s, weight: 1}]"]
    cfg = load_config(None, base + ["deepspeed.torch_adam=true", "deepspeed.adam_fused=true"])
    t = cfg.train
    ds = cfg.deepspeed.render(micro_batch_size=1, grad_accum=1, world_size=2, precision="bf16", lr=t.lr,
                              betas=t.betas, eps=t.eps, weight_decay=t.weight_decay, grad_clip=t.grad_clip)
    # DeepSpeed passes the optimizer params it does not know on to torch.optim.AdamW.
    assert ds["optimizer"]["params"]["fused"] is True
    with pytest.raises(ConfigError, match="adam_fused.*torch_adam: true"):
        load_config(None, base + ["deepspeed.adam_fused=true"])


def test_cli_prints_resolved_config_and_fails_cleanly(repo_root):
    cmd = [sys.executable, "-m", "delia_dist.cli", "config", "show", "configs/llama3_70b.yaml"]
    ok = subprocess.run(cmd + ["--set", "train.lr=1e-5"], cwd=repo_root, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "lr: 1.0e-05" in ok.stdout and "meta-llama/Meta-Llama-3-70B-Instruct" in ok.stdout
    bad = subprocess.run(cmd + ["--set", "train.lrr=1e-5"], cwd=repo_root, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "train.lrr: unknown key; did you mean 'lr'?" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("section, key, message", [
    ("loss", "grad_accum: input", "loss.grad_accum: renamed to loss.head_grad_dtype"),
    ("train", "log_every: 5", "train.log_every: removed: it was never read; metrics are logged every "
                              "tracking.log_every steps"),
    ("data", "mix_window: 200", "data.mix_window: removed: nothing read it"),
    ("data", "mix_tolerance: 0.05", "data.mix_tolerance: removed: nothing read it"),
    ("tracking", "max_queue: 20000", "tracking.max_queue: removed: every value now goes to"),
])
def test_renamed_and_removed_keys_say_what_to_write(tmp_path, section, key, message):
    text = BASE + f"{section}:\n  {key}\n" if section != "data" else BASE + f"  {key}\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert message in str(e.value) and f"{path}:" in str(e.value)
    with pytest.raises(ConfigError, match="renamed to loss.head_grad_dtype"):
        load_config(write(tmp_path, BASE, "base.yaml"), ["loss.grad_accum=input"])


def test_config_saved_by_an_older_version_still_resumes(repo_root):
    """A checkpoint's config written before the rename carries the value over; removed knobs are dropped."""
    old = to_dict(load_config(repo_root / "configs/tiny_cpu.yaml"))
    old["loss"]["grad_accum"] = old["loss"].pop("head_grad_dtype")
    old["loss"]["grad_accum"] = "input"
    old["train"]["log_every"] = 5
    old["data"] |= {"mix_window": 200, "mix_tolerance": 0.05}
    old["tracking"]["max_queue"] = 20000
    cfg = config_from_dict(old)
    assert cfg.loss.head_grad_dtype == "input" and not hasattr(cfg.train, "log_every")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """A shipped config that no longer validates (a renamed or removed key) breaks the job
    that uses it only when someone runs it: catch it here."""
    load_config(path, check_paths=False)
