"""`include:` in a config YAML: the included files lie beneath the file's own values,
--set wins over both, and a missing or cyclic include is one error naming where it is."""
from __future__ import annotations

import textwrap

import pytest

from delia_dist.config import ConfigError, load_config
from tests.test_config import BASE


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_paper_optim_block_is_merged(tmp_path, repo_root):
    recipe = repo_root / "configs/recipes/paper_optim.yaml"
    path = write(tmp_path / "run.yaml", f"include: [{recipe}]\n" + BASE)
    t = load_config(path).train
    assert (t.lr, t.warmup_steps, t.schedule, t.weight_decay, t.betas) == (2e-4, 25, "constant", 0.01, [0.9, 0.999])


def test_own_values_win_and_set_wins_over_both(tmp_path):
    write(tmp_path / "recipes/optim.yaml", """\
        train:
          lr: 3.0e-4
          warmup_steps: 7
          betas: [0.8, 0.9]
        """)
    path = write(tmp_path / "exp/run.yaml", "include: [../recipes/optim.yaml]\n" + BASE + "train:\n  lr: 1.0e-5\n")
    cfg = load_config(path)
    assert cfg.train.lr == 1e-5  # the file's own value
    assert cfg.train.warmup_steps == 7 and cfg.train.betas == [0.8, 0.9]  # the include's, merged beneath
    assert cfg.model.name_or_path == "meta-llama/Meta-Llama-3-8B"
    cfg = load_config(path, ["train.warmup_steps=3", "train.lr=2e-5"])
    assert (cfg.train.warmup_steps, cfg.train.lr) == (3, 2e-5)


def test_later_include_wins_and_includes_nest(tmp_path):
    write(tmp_path / "a.yaml", "include: [c.yaml]\ntrain:\n  lr: 1.0e-3\n")
    write(tmp_path / "b.yaml", "train:\n  lr: 2.0e-3\n")
    write(tmp_path / "c.yaml", "train:\n  grad_accum: 4\n")
    cfg = load_config(write(tmp_path / "run.yaml", "include: [a.yaml, b.yaml]\n" + BASE))
    assert cfg.train.lr == 2e-3 and cfg.train.grad_accum == 4


def test_missing_include_names_including_file_line_and_key(tmp_path):
    path = write(tmp_path / "run.yaml", BASE + "include:\n  - recipes/paper.yaml\n  - nowhere.yaml\n")
    write(tmp_path / "recipes/paper.yaml", "train:\n  lr: 1.0\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:13: include.1: included file not found: ")
    assert msg.endswith("nowhere.yaml") and "\n" not in msg


def test_error_in_included_file_names_that_file(tmp_path):
    inc = write(tmp_path / "optim.yaml", "train:\n  lr: 1.0\n  warmup: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path / "run.yaml", "include: [optim.yaml]\n" + BASE))
    assert str(e.value).startswith(f"{inc}:3: train.warmup: unknown key")


def test_include_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "include: [b.yaml]\n")
    write(tmp_path / "b.yaml", "include: [a.yaml]\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(tmp_path / "a.yaml")
