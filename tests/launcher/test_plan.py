"""`delia plan`: the numbers a user sizes a 64-GPU job by, checked against hand counts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from delia_dist.config import load_config
from delia_dist.plan import KNOWN_ARCHITECTURES, architecture, plan

REPO = Path(__file__).resolve().parents[2]
GB = 1e9


def cfg(name, *overrides):
    return load_config(REPO / "configs" / name, list(overrides), check_paths=False)


def test_known_llama3_parameter_counts():
    # The published sizes: 8,030,261,248 and 70,553,706,496 parameters.
    c8, c70 = cfg("llama3_8b.yaml"), cfg("llama3_70b.yaml")
    assert architecture(c8.model).total_params() == 8_030_261_248
    assert architecture(c70.model).total_params() == 70_553_706_496
    assert all(a["vocab_size"] == 128256 for a in KNOWN_ARCHITECTURES.values())


def test_70b_on_8x8_h100_fits_with_sharded_states():
    p = plan(cfg("llama3_70b.yaml"), nodes=8, gpus_per_node=8, gpu="h100-80gb", mfu=0.4)
    n = p.params  # vocab grows by the new <sep> token, padded to 64: 128320
    assert n == 70_553_706_496 + 64 * 8192 * 2
    mem = {k.split(" (")[0].split(":")[0]: v for k, v in p.memory_gb.items()}
    # bf16 weights 2 B + fp32 master/m/v 12 B per parameter, over 64 GPUs: ~15.4 GB each.
    assert mem["weights"] + mem["optimizer"] == pytest.approx(14 * n / 64 / GB, rel=1e-9)
    assert 15.2 < mem["weights"] + mem["optimizer"] < 15.6
    assert mem["gradients"] == pytest.approx(2 * n / 64 / GB)
    # Checkpointed activations: 80 layer inputs of 8192 x 8192 bf16, plus one layer recomputed.
    per_layer_token = 2 * (7 * 8192 + 3 * 1024 + 4 * 28672)
    assert mem["activations"] == pytest.approx(8192 * (80 * 8192 * 2 + per_layer_token) / GB)
    assert p.fits and p.total_gb < 80 * 2**30 / GB
    # 6 N (matmul params) + 12 L H s FLOPs per token at 40% of 989 TFLOP/s on 64 GPUs.
    flops = 6 * (n - 128320 * 8192 - 8192) + 12 * 80 * 8192 * 8192  # all but embedding, final norm
    assert p.flops_per_token == flops
    assert p.tokens_per_s == pytest.approx(0.4 * 989e12 * 64 / flops)
    assert 50_000 < p.tokens_per_s < 55_000


def test_does_not_fit_says_what_to_change():
    p = plan(cfg("llama3_70b.yaml", "model.gradient_checkpointing=false", "loss.impl=naive"),
             nodes=1, gpus_per_node=8, gpu="a100-80gb")
    assert not p.fits
    logits = [v for k, v in p.memory_gb.items() if k.startswith("logits")][0]
    assert logits == pytest.approx(8192 * 128320 * 10 / GB)  # bf16 logits + fp32 softmax + fp32 grad
    advice = " ".join(p.advice)
    assert "gradient_checkpointing: true" in advice and "loss.impl: fused" in advice
    assert "more GPUs: 4 nodes x 8" in advice


def test_zero_stage_and_offload_move_the_states():
    base = cfg("llama3_8b.yaml")
    n = plan(base, nodes=1, gpus_per_node=8).params
    opt = lambda p: [v for k, v in p.memory_gb.items() if k.startswith("optimizer")][0]  # noqa: E731
    assert opt(plan(cfg("llama3_8b.yaml", "deepspeed.stage=0"), nodes=1, gpus_per_node=8)) == pytest.approx(12 * n / GB)
    assert opt(plan(cfg("llama3_8b.yaml", "deepspeed.stage=1"), nodes=1, gpus_per_node=8)) == \
        pytest.approx(12 * n / 8 / GB)
    off = plan(cfg("llama3_8b.yaml", "deepspeed.offload_optimizer=cpu"), nodes=1, gpus_per_node=8)
    assert opt(off) == 0 and off.host_memory_gb == pytest.approx(12 * n / 8 / GB)


def _delia(*args):
    return subprocess.run([sys.executable, "-m", "delia_dist.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_cli_prints_numbers_and_exit_code_says_fit():
    ok = _delia("plan", "configs/llama3_70b.yaml", "--nodes", "8", "--gpus-per-node", "8", "--gpu", "h100-80gb")
    assert ok.returncode == 0, ok.stderr
    assert "FITS:" in ok.stdout and "weights + optimizer 15.4" in ok.stdout and "tokens/s at MFU 0.40" in ok.stdout
    # The arithmetic is printed with the model's own numbers, so a user can redo it.
    assert "= 16 B/param, ZeRO-3: all / 64 GPUs" in ok.stdout
    assert "2*(7*8192 + 3*1024 + 4*28672)" in ok.stdout and "6*N_matmul + 12*L*H*s" in ok.stdout
    assert "unfused would be b*s*V*10 = 10.5 GB" in ok.stdout
    bad = _delia("plan", "configs/llama3_70b.yaml", "--nodes", "1", "--gpus-per-node", "2")
    assert bad.returncode == 1 and "DOES NOT FIT" in bad.stdout
    unknown = _delia("plan", "configs/llama3_70b.yaml", "--nodes", "1", "--gpus-per-node", "8",
                     "--set", "model.name_or_path=acme/unknown-13b")
    assert unknown.returncode == 2 and "acme/unknown-13b" in unknown.stderr and "config.json" in unknown.stderr


def test_model_built_from_config_uses_the_given_vocab():
    c = cfg("tiny_cpu.yaml")
    a = architecture(c.model, vocab=600)
    h, i, layers, kv = 128, 256, 2, 32
    layer = h * 64 + 2 * h * kv + 64 * h + 3 * h * i + 2 * h  # 2 heads x head_dim 32 = 64
    assert a.total_params() == 600 * h * 2 + layers * layer + h


def test_70b_checkpoint_bytes_data_state_and_export_memory():
    """What a 70B step directory costs on disk, per rank and per node, and what a node needs
    to export it: counted from the parameter count, not copied from a run."""
    p = plan(cfg("llama3_70b.yaml"), nodes=8, gpus_per_node=8, gpu="h100-80gb")
    n, st = p.params, p.storage_gb
    per_rank = (2 * n + 12 * n) / 64 / GB  # bf16 partition + fp32 master, m, v
    assert st["checkpoint: model + optimizer states, per rank"] == pytest.approx(per_rank)
    assert st["checkpoint: per node (8 ranks)"] == pytest.approx(8 * per_rank)
    assert 980 < st["checkpoint: whole step dir (64 ranks)"] < 1000
    # 2 sources x 4 workers x 100000 buffered samples by reference: tens of MB, not the ~6 GB
    # a rank stored when the buffers held token arrays.
    data = st["checkpoint: data-stream state, per rank"]
    assert 2 * 4 * 100_000 * 16 / GB < data < 0.05
    assert st["elastic resume: universal copy (once, on disk)"] == pytest.approx(12 * n / GB)
    # Re-dealing the epoch: rank 0 reads all 64 old states once (about 1 GB); each rank its own.
    assert st["elastic resume: old data states rank 0 re-maps once (64 files)"] == pytest.approx(64 * data)
    assert 64 * data < 2.0
    # Each rank reads its own 1/64 of the universal copy (~13 GB, not all ~850 GB), and the
    # filesystem serves the copy once (not 64 times, ~54 TB).
    assert st["elastic resume: universal copy each rank reads (1/64)"] == pytest.approx(12 * n / 64 / GB)
    assert 12 < st["elastic resume: universal copy each rank reads (1/64)"] < 14
    assert st["elastic resume: read from the filesystem, all 64 ranks"] == pytest.approx(12 * n / GB + 2 * 64 * data)
    # The streaming export holds about one embedding matrix in fp32 twice, not the model.
    vh = 128320 * 8192
    assert vh * 10 / GB < st["export: peak memory of the streaming writer"] < 0.1 * 2 * n / GB
    assert st["export: HF safetensors on disk"] == pytest.approx(2 * n / GB)
    assert "checkpoint and export" in p.render()


def test_paper_lora_layout_counts_the_embedding_adapter(repo_root):
    """configs/paper/llama3_70b_sep_format.yaml: LoRA r16 on q/k/v/o of 80 layers plus the
    embedding adapter (r x (vocab + hidden)); lm_head frozen, embeddings not trained in full."""
    cfg = load_config(repo_root / "configs/paper/llama3_70b_sep_format.yaml")
    p = plan(cfg, nodes=8, gpus_per_node=8)
    hidden, kv, layers, vocab = 8192, 1024, 80, 128256 + 1  # + <sep>
    qkvo = 16 * ((hidden + hidden) + (hidden + kv) + (hidden + kv) + (hidden + hidden))
    vocab_rows = -(-vocab // cfg.model.pad_vocab_to_multiple_of) * cfg.model.pad_vocab_to_multiple_of
    assert p.trainable_params in {layers * qkvo + 16 * (v + hidden) for v in (vocab, vocab_rows, 128256)}
    no_adapter = plan(load_config(repo_root / "configs/paper/llama3_70b_sep_format.yaml",
                                  ["model.lora.target_modules=[q_proj, k_proj, v_proj, o_proj]"]),
                      nodes=8, gpus_per_node=8)
    assert p.trainable_params - no_adapter.trainable_params in {16 * (v + hidden) for v in (vocab, vocab_rows, 128256)}


def test_70b_checkpoint_seconds_and_cost_at_5_gbps(monkeypatch):
    """The save/load seconds a user weighs against DELIA_DIST_TIMEOUT and the USR1 warning,
    and the shipped interval's cost: at most 2% of training time at 5 GB/s."""
    monkeypatch.delenv("DELIA_DIST_TIMEOUT", raising=False)
    p = plan(cfg("llama3_70b.yaml"), nodes=8, gpus_per_node=8, gpu="h100-80gb")
    t, st = p.checkpoint_times, p.storage_gb
    assert t.bandwidth_gbps == 5.0
    step_dir = st["checkpoint: whole step dir (64 ranks)"]
    assert t.save_s == pytest.approx(step_dir / 5) and 190 < t.save_s < 205
    assert t.model_load_s == pytest.approx(2 * p.params / GB / 5)
    universal = st["elastic resume: universal copy (once, on disk)"]
    assert t.elastic_load_s == pytest.approx((step_dir + 2 * universal) / 5)
    # Collectives wait 3x the largest transfer, here well above the 600 s job timeout.
    assert t.bound_s == pytest.approx(3 * t.elastic_load_s) and t.bound_s > 600
    assert t.step_s == pytest.approx(p.step_tokens / p.tokens_per_s)
    assert t.cost == pytest.approx(t.save_s / (500 * t.step_s)) and t.cost <= 0.02
    assert "checkpoint time at 5 GB/s" in p.render() and "of training time" in p.render()
    assert not any("every_steps" in a for a in p.advice)


def test_checkpoint_interval_too_short_or_filesystem_slow_says_what_to_set():
    p = plan(cfg("llama3_70b.yaml", "checkpoint.every_steps=200"), nodes=8, gpus_per_node=8)
    assert p.checkpoint_times.cost > 0.02
    need = p.checkpoint_times.every_steps_for()
    assert any(f"checkpoint.every_steps: {need}" in a for a in p.advice)
    assert p.checkpoint_times.save_s / (need * p.checkpoint_times.step_s) <= 0.02
    slow = plan(cfg("llama3_70b.yaml", "checkpoint.fs_bandwidth_gbps=1"), nodes=8, gpus_per_node=8)
    assert slow.checkpoint_times.save_s == pytest.approx(5 * p.checkpoint_times.save_s)
    with pytest.raises(Exception, match="fs_bandwidth_gbps"):
        cfg("llama3_70b.yaml", "checkpoint.fs_bandwidth_gbps=0")
