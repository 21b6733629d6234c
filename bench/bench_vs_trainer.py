"""delia's training loop beside transformers.Trainer on identical ZeRO-3 work, runs alternating.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_vs_trainer.py --model tiny --rounds 3
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_vs_trainer.py --model smollm2 --rounds 3
    ... --quick                      # 2 timed steps a side, one round: does it run
    ... --load busy:2 | --load train # the same, beside 2 busy loops or another 2-rank training job

Identical work on both sides: one model built by delia's own build_model (new tokens, PEFT
LoRA where the config has it, so the same trainable parameters), the same DeepSpeed dict
(`ds_config_for`, what delia passes to deepspeed.initialize), 2 ranks over gloo, and the
same packed rows: the Trainer is fed, before its clock starts, the rows delia's stream
yields each rank (the Trainer's labels are given pre-shifted as `shift_labels`), while
delia's loop reads its stream live, so its data time is inside its steps. The Trainer's
loss is its own (full logits, as LLaMA-Factory and axolotl run it); delia's is the config's.

Each run is one `torchrun` of this file with --worker; rank 0 writes a JSON line. A run's
time is from the end of its last warm-up step to the end of its last step; its peak RSS is
the larger rank's. Rounds alternate which side goes first. Printed: each run with the load
average beside it, the median tokens/s per side, the ratio, and each side's phase profile
(delia's train.profile; the same timers around the Trainer's data fetch, forward + loss,
backward, DeepSpeed step and collectives). The Trainer runs under an explicit
accelerate PartialState on the gloo group delia made, and checks that its model is a
ZeRO-3 DeepSpeed engine on every rank.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = {
    # configs/tiny_cpu.yaml's model and batch (the second row).
    "tiny": dict(config="configs/tiny_cpu.yaml", steps=50, warmup=10,
                 overrides=["model.new_tokens.0.init=mean"]),
    # SmolLM2-135M-Instruct with configs/smollm2_cpu.yaml's LoRA, micro-batch 1 x 256 tokens.
    "smollm2": dict(config="configs/smollm2_cpu.yaml", steps=8, warmup=2,
                    overrides=["train.micro_batch_size=1", "model.new_tokens.0.init=mean",
                               "data.sources.downstream.paraphrases=null"]),
}
SMOLLM2 = REPO / ".cache/models/smollm2-135m-instruct"


# ---------------------------------------------------------------- worker (one per rank)

def load_cfg(args):
    from delia_dist.config import load_config
    steps = args.warmup + args.steps
    overrides = list(MODELS[args.model]["overrides"]) + [
        f"run_dir={args.ws / 'run'}", f"train.max_steps={steps}", "eval.every_steps=null",
        "checkpoint.every_steps=1000000", "checkpoint.save_on_exit=false", "tracking.enabled=false",
        "train.profile=true"] + list(args.set or [])
    if args.model == "smollm2":
        overrides += [f"model.name_or_path={SMOLLM2}",
                      f"data.sources.diverse.shards={args.ws / 'shards/diverse/manifest.json'}",
                      f"data.sources.downstream.shards={args.ws / 'shards/downstream/manifest.json'}"]
    else:
        overrides += [f"model.tokenizer={args.ws / 'runs/tiny/tokenizer'}",
                      f"data.sources.diverse.shards={args.ws / 'runs/tiny/shards/diverse/manifest.json'}",
                      f"data.sources.downstream.shards={args.ws / 'runs/tiny/shards/downstream/manifest.json'}",
                      f"data.sources.downstream.paraphrases={args.ws / 'runs/tiny/data/paraphrases.jsonl'}"]
    return load_config(REPO / MODELS[args.model]["config"], overrides)


def run_ours(cfg, env, device, warmup: int) -> dict:
    from delia_dist.train.trainer import Trainer
    trainer = Trainer(cfg, env, device)
    trainer.fit(lambda: False)
    prof = trainer.profile
    return {"step_ends": prof.step_ends, "profile": prof.summary(skip=warmup),
            "tokens": trainer.state.tokens}


def rows_for_all_ranks(cfg, tokenizer, world: int, n_batches: int) -> list[dict]:
    """The micro-batches delia's stream gives each rank, interleaved the way accelerate
    shards a sequential loader's batches (batch i goes to rank i % world)."""
    from delia_dist.data import build_train_stream
    per_rank = []
    for r in range(world):
        stream = iter(build_train_stream(cfg.data, tokenizer, rank=r, world_size=world,
                                         micro_batch_size=cfg.train.micro_batch_size))
        per_rank.append([next(stream) for _ in range(n_batches)])
    rows = []
    for i in range(n_batches):
        for r in range(world):
            b = per_rank[r][i]
            for j in range(b["input_ids"].shape[0]):
                rows.append({"input_ids": b["input_ids"][j], "position_ids": b["position_ids"][j],
                             "labels": b["labels"][j], "shift_labels": b["labels"][j],
                             "tokens": int((b["segment_ids"][j] > 0).sum())})
    return rows


def run_hf_trainer(cfg, env, warmup: int) -> dict:
    import torch
    from accelerate import PartialState
    from accelerate.utils import DistributedType
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from delia_dist.model.build import build_model, load_tokenizer
    from delia_dist.train import profile as step_profile
    from delia_dist.train.trainer import ds_config_for

    # accelerate adopts the gloo group delia.distributed.init made, as a DeepSpeed state;
    # TrainingArguments would otherwise reset it and, with no GPU, run one process alone.
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        state = PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    assert state.num_processes == env.world_size and state.process_index == env.rank, state
    assert state.distributed_type == DistributedType.DEEPSPEED, state.distributed_type
    world, t = env.world_size, cfg.train
    ds_config = ds_config_for(cfg, world)
    tokenizer = load_tokenizer(cfg.model)
    model, _ = build_model(cfg.model, tokenizer, ds_config, t.precision, seed=t.seed)
    steps = cfg.train.max_steps
    rows = rows_for_all_ranks(cfg, tokenizer, world, steps * t.grad_accum)
    tokens = sum(r.pop("tokens") for r in rows)
    prof = step_profile.StepProfile()

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return rows[i]

    def collate(items):
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    class Profiled(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

        def get_batch_samples(self, *a, **kw):
            with prof.phase("data"):
                return super().get_batch_samples(*a, **kw)

        def compute_loss(self, *a, **kw):
            with prof.phase("forward"):
                return super().compute_loss(*a, **kw)

    class Clock(TrainerCallback):
        engine_checked = False

        def on_step_begin(self, args, state, control, **kw):
            if not self.engine_checked:
                import deepspeed
                engine = trainer.model_wrapped
                assert isinstance(engine, deepspeed.DeepSpeedEngine), type(engine)
                assert engine.zero_optimization_stage() == 3, engine.zero_optimization_stage()
                assert engine.world_size == world, engine.world_size
                step, backward = engine.step, engine.backward

                def timed_step(*a, **k):
                    with prof.phase("optimizer"):
                        return step(*a, **k)

                def timed_backward(*a, **k):
                    with prof.phase("backward"):
                        return backward(*a, **k)
                engine.step, engine.backward = timed_step, timed_backward
                self.engine_checked = True

        def on_step_end(self, args, state, control, **kw):
            prof.end_step()

    targs = TrainingArguments(
        output_dir=str(Path(cfg.run_dir) / "hf"), per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.grad_accum, max_steps=steps, learning_rate=t.lr, weight_decay=t.weight_decay,
        adam_beta1=t.betas[0], adam_beta2=t.betas[1], adam_epsilon=t.eps, max_grad_norm=t.grad_clip,
        lr_scheduler_type="cosine" if t.schedule == "cosine" else "constant_with_warmup",
        warmup_steps=t.warmup_steps, logging_steps=cfg.tracking.log_every, save_strategy="no", report_to="none",
        deepspeed=ds_config, accelerator_config={"use_configured_state": True}, remove_unused_columns=False,
        dataloader_pin_memory=False, disable_tqdm=True,
        seed=t.seed, bf16=t.precision == "bf16", fp16=t.precision == "fp16")
    trainer = Profiled(model=model, args=targs, train_dataset=Data(), data_collator=collate, callbacks=[Clock()])
    prof.install_comm_timers()
    out = trainer.train()
    prof.uninstall()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_ends": prof.step_ends, "profile": prof.summary(skip=warmup), "tokens": tokens,
            "train_loss": out.training_loss, "logged_losses": losses,
            "zero3_engine": True}


def worker(args) -> None:
    import logging

    from delia_dist import distributed
    from launcher.env import detect_env
    logging.basicConfig(level=logging.WARNING)
    env = detect_env()
    device = distributed.init(env)
    cfg = load_cfg(args)
    if args.worker == "ours":
        res = run_ours(cfg, env, device, args.warmup)
    else:
        res = run_hf_trainer(cfg, env, args.warmup)
    ends = res.pop("step_ends")
    timed = ends[-1] - ends[args.warmup - 1] if args.warmup >= 1 else ends[-1] - ends[0]
    n_timed = args.steps if args.warmup >= 1 else args.steps - 1
    res.update(seconds=timed, timed_steps=n_timed, steps=len(ends),
               tokens_per_s_all=res["tokens"] / max(ends[-1] - ends[0], 1e-9),
               peak_rss_mb=distributed.max_over_ranks(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    if env.is_main:
        Path(args.result).write_text(json.dumps(res))
    distributed.barrier()
    sys.stdout.flush()
    os._exit(0)  # gloo's threads crash the interpreter at exit now and then (notes/cpu-stack.md)


# ---------------------------------------------------------------- orchestrator

def prepare(model: str, ws: Path) -> None:
    """Shards, tokenizer and paraphrases for `model` under ws (synthetic records; for
    SmolLM2 tokenized with its own tokenizer plus <sep>)."""
    if model == "tiny":
        from delia_dist.data.synth import prepare_workspace
        prepare_workspace(ws / "runs/tiny", n_train=200, n_eval=4, n_diverse=3000)
        return
    if not (SMOLLM2 / "config.json").is_file():
        sys.exit(f"error: {SMOLLM2} is missing; run `.venv/bin/python -m delia_dist.cli model fetch "
                 f"smollm2-135m-instruct {SMOLLM2.relative_to(REPO)}` first")
    from delia_dist.config import load_config
    from delia_dist.data import ShardWriter
    from delia_dist.data.synth import diverse_records, real_format_records
    from delia_dist.model.build import load_tokenizer
    cfg = load_config(REPO / MODELS[model]["config"], [f"model.name_or_path={SMOLLM2}"])
    tok = load_tokenizer(cfg.model)
    for name, records in (("downstream", real_format_records(400, 1)), ("diverse", diverse_records(2000, 3))):
        out = ws / "shards" / name
        if not (out / "manifest.json").is_file():
            with ShardWriter(out, tok, max_shard_bytes=1 << 22) as w:
                for r in records:
                    w.write(r)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def start_load(spec: str | None, ws: Path) -> list[subprocess.Popen]:
    """busy:N: N busy-loop processes; train: another 2-rank training job (the tiny model,
    delia's loop) restarted until the bench ends."""
    if not spec:
        return []
    if spec.startswith("busy:"):
        return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(int(spec[5:]))]
    if spec == "train":
        from delia_dist.data.synth import prepare_workspace
        root = ws / "load"
        prepare_workspace(root / "runs/tiny", n_train=200, n_eval=4, n_diverse=3000)
        loop = (f"while true; do {sys.executable} -m delia_dist.cli train {REPO / 'configs/tiny_cpu.yaml'} --nproc 2 "
                f"--set run_dir={root / 'runs/job'} --set train.max_steps=100000 --set eval.every_steps=null "
                f"--set checkpoint.every_steps=1000000 --set checkpoint.save_on_exit=false "
                f"--set tracking.enabled=false >/dev/null 2>&1; rm -rf {root / 'runs/job'}; done")
        return [subprocess.Popen(["bash", "-c", loop], cwd=root, start_new_session=True)]
    sys.exit(f"error: --load {spec}: expected busy:N or train")


def stop_load(procs: list[subprocess.Popen]) -> None:
    import signal
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM) if p.args[0] == "bash" else p.terminate()
        except ProcessLookupError:
            pass
        p.wait()


def run_side(side: str, args, ws: Path, round_: int) -> dict:
    result = ws / f"{side}-{round_}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), "--worker", side, "--model", args.model, "--ws", str(ws),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--result", str(result)]
    for s in args.set or []:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    before = loadavg()
    proc = subprocess.run(cmd, cwd=ws, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not result.is_file():
        sys.exit(f"{side} run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    res = json.loads(result.read_text())
    res.update(side=side, round=round_, load_before=before, load_after=loadavg())
    res["tokens_per_s"] = res["tokens"] / (args.warmup + args.steps) * res["timed_steps"] / res["seconds"]
    return res


def print_profiles(runs: list[dict]) -> None:
    phases = ["data", "collectives", "forward", "loss", "backward", "optimizer", "logging"]
    print("\nphase profile, median ms per step over the timed steps, median over runs "
          "(Trainer: forward includes its loss; its logging is not timed):")
    print("| side | " + " | ".join(phases) + " | sum | OS threads | Python threads besides main |")
    print("|---" * (len(phases) + 4) + "|")
    for side in ("ours", "trainer"):
        mine = [r for r in runs if r["side"] == side]
        cells = [statistics.median(r["profile"]["median_s"].get(p, 0.0) for r in mine) * 1000 for p in phases]
        started = sorted({n for r in mine for n in r["profile"]["threads"]["python_alive"]})
        os_threads = max(r["profile"]["threads"]["os_now"] for r in mine)
        print(f"| {side} | " + " | ".join(f"{c:.1f}" for c in cells) + f" | {sum(cells):.1f} | {os_threads} | "
              f"{', '.join(started) or 'none'} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--rounds", type=int, default=3, help="pairs of runs, alternating which side goes first")
    ap.add_argument("--steps", type=int, help="timed steps per run (default: per model)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default: per model)")
    ap.add_argument("--quick", action="store_true", help="one round, 2 timed steps after 1 warm-up: does it run")
    ap.add_argument("--load", help="beside both sides: busy:N busy loops, or train (another 2-rank job)")
    ap.add_argument("--set", action="append", help="config override for both sides (key=value), repeatable")
    ap.add_argument("--workdir", help="keep shards and results here (default: a temporary directory)")
    ap.add_argument("--json", help="write every run's record here")
    ap.add_argument("--worker", choices=["ours", "trainer"], help=argparse.SUPPRESS)
    ap.add_argument("--ws", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 2, 1
    args.steps = args.steps or MODELS[args.model]["steps"]
    args.warmup = MODELS[args.model]["warmup"] if args.warmup is None else args.warmup
    if args.worker:
        worker(args)
        return 0
    if args.steps < 1 or args.rounds < 1 or args.warmup < 1:
        print("error: --steps, --rounds and --warmup must be >= 1", file=sys.stderr)
        return 2
    from machine import cpu_model
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        ws = Path(tmp)
        prepare(args.model, ws)
        load = start_load(args.load, ws)
        runs = []
        try:
            for r in range(args.rounds):
                for side in (("ours", "trainer") if r % 2 == 0 else ("trainer", "ours")):
                    res = run_side(side, args, ws, r)
                    runs.append(res)
                    print(f"round {r} {side:<8} {res['tokens_per_s']:8.1f} tokens/s  {res['seconds']:7.2f} s for "
                          f"{res['timed_steps']} steps  peak RSS {res['peak_rss_mb']:.0f} MiB  "
                          f"load {res['load_before']} -> {res['load_after']}", flush=True)
        finally:
            stop_load(load)
    import torch
    import transformers
    print(f"\n# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_model()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__}, transformers {transformers.__version__}; model {args.model}, "
          f"{args.warmup} warm-up + {args.steps} timed steps per run, {args.rounds} rounds, load beside: "
          f"{args.load or 'none'}")
    med = {s: statistics.median(r["tokens_per_s"] for r in runs if r["side"] == s) for s in ("ours", "trainer")}
    rss = {s: max(r["peak_rss_mb"] for r in runs if r["side"] == s) for s in ("ours", "trainer")}
    pairs = [a["tokens_per_s"] / b["tokens_per_s"] for a in runs if a["side"] == "ours"
             for b in runs if b["side"] == "trainer" and b["round"] == a["round"]]
    print("| side | tokens/s (median) | peak RSS per rank (MiB, max) |")
    print("|---|---|---|")
    for s in ("ours", "trainer"):
        print(f"| {s} | {med[s]:.1f} | {rss[s]:.0f} |")
    print(f"ratio ours/trainer: {med['ours'] / med['trainer']:.2f}x (median tokens/s); per round: "
          f"{', '.join(f'{p:.2f}x' for p in pairs)}; peak RSS {rss['ours'] / rss['trainer']:.2f}x")
    print_profiles(runs)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
