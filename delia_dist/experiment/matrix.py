"""`delia experiment`: the configured matrix (controls, DELIA at several diverse shares,
ablations; each repeated per seed), each run trained, exported and evaluated as its own MLflow run in one
experiment, then compared side by side."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .. import atomic
from ..config import Config, load_config
from ..config.experiment import RunSpec
from ..tracking.ui_tags import NOTE, PARENT_RUN
from .run_tracking import child_tags, chosen_overrides, mark_failed, tracked

log = logging.getLogger("delia.experiment")


REPO = Path(__file__).resolve().parents[2]


def _run_cmd(cmd: list[str], env: dict, log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def train_command(config_path: str, overrides: list[str], cfg: Config, run_dir: Path,
                  nproc: int) -> tuple[list[str], dict[str, str]]:
    """The command (and its environment) that trains one run of the matrix.

    Slurm gets the config and overrides through the environment with --export=ALL, not
    inside --export's comma list, so an override holding a comma (a YAML list) survives."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if cfg.experiment.backend == "slurm":
        script = Path(cfg.experiment.slurm_script)
        if not script.is_file() and (REPO / script).is_file():
            script = REPO / script
        if any(" " in o for o in overrides):
            raise ValueError(f"Slurm runs pass overrides space-separated; these contain spaces: "
                             f"{[o for o in overrides if ' ' in o]}")
        env |= {"DELIA_CONFIG": str(Path(config_path).resolve()), "DELIA_OVERRIDES": " ".join(overrides),
                "DELIA_ROOT": str(REPO), "DELIA_VENV": sys.prefix, "DELIA_WORKDIR": os.getcwd()}
        cmd = ["sbatch", "--parsable", "--wait", f"--job-name=delia-{run_dir.name}",
               f"--output={(run_dir / 'train.log').resolve()}", "--open-mode=append", "--export=ALL", str(script)]
    else:
        cmd = [sys.executable, "-m", "delia_dist.cli", "train", config_path, "--nproc", str(nproc)]
        for o in overrides:
            cmd += ["--set", o]
    return cmd, env


def train_run(config_path: str, overrides: list[str], cfg: Config, run_dir: Path, nproc: int) -> None:
    log_path = run_dir / "train.log"
    cmd, env = train_command(config_path, overrides, cfg, run_dir, nproc)
    code = _run_cmd(cmd, env, log_path)
    if code != 0:
        tail = log_path.read_text().splitlines()[-25:]
        raise RuntimeError(f"training {run_dir.name} failed (exit {code}); last lines of {log_path}:\n"
                           + "\n".join(tail))


def _last_metrics(run_dir: Path) -> dict:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    out: dict = {}
    for r in rows:  # latest value of every key
        out.update(r)
    out["first_loss"] = next(r["loss"] for r in rows if r.get("step", 0) > 0)
    return out


def seeded(name: str, seed: int | None) -> str:
    return name if seed is None else f"{name}-s{seed}"


def expand_runs(base: Config) -> list[tuple[str, RunSpec, int | None]]:
    """(run name, matrix entry, seed) for every run x seed, in matrix order."""
    seeds = base.experiment.seeds or [None]
    return [(seeded(spec.name, seed), spec, seed) for spec in base.experiment.runs for seed in seeds]


def planned_steps(cfg: Config, world_size: int) -> int:
    from ..train.trainer import max_steps_for
    return max_steps_for(cfg, world_size)


def plan_runs(config_path: str, overrides: list[str] = (), only: list[str] | None = None,
              check_paths: bool = True) -> list[tuple[str, Path, list[str], Config]]:
    """(name, run_dir, overrides, resolved config) per selected run (x seed). The matrix
    entry changes the base config, then its seed and step count (steps_from), and
    command-line --set wins over all of them; every run logs into the base config's MLflow
    store and experiment, under its own run name. --only takes run names with or without
    the seed suffix."""
    from ..tracking import default_uri

    base = load_config(config_path, overrides, check_paths=check_paths)
    runs = expand_runs(base)
    known = [s.name for s in base.experiment.runs] + [n for n, _, seed in runs if seed is not None]
    unknown = sorted(set(only or ()) - set(known))
    if unknown:
        raise ValueError(f"--only names {unknown} are not in experiment.runs {[s.name for s in base.experiment.runs]}"
                         + (f" x seeds {base.experiment.seeds}" if base.experiment.seeds else ""))
    if not runs:
        raise ValueError("experiment.runs is empty: nothing to run")
    root = Path(base.run_dir)
    uri = default_uri(base.tracking, root)
    plan, resolved = [], {}
    for name, spec, seed in runs:
        run_dir = root / name
        seed_over = [] if seed is None else [f"train.seed={seed}", f"data.seed={seed}",
                                             f"tracking.tags.group={spec.name}", f"tracking.tags.seed={seed}"]
        steps_over = []
        if spec.steps_from is not None:
            ref = resolved[seeded(spec.steps_from, seed)]
            steps_over = [f"train.max_steps={planned_steps(ref, base.experiment.nproc)}",
                          f"tracking.tags.steps_from={seeded(spec.steps_from, seed)}"]
        # The run's own directory, store and name go last: a `--set run_dir=X` on the command
        # line moves the whole matrix under X, it must not put every run in one directory.
        run_over = [*spec.overrides, *seed_over, *steps_over, *overrides, f"run_dir={run_dir}", f"tracking.uri={uri}",
                    f"tracking.run_name={name}"]
        resolved[name] = load_config(config_path, run_over, check_paths=check_paths)
        if not only or name in only or spec.name in only:
            plan.append((name, run_dir, run_over, resolved[name]))
    return plan


def _steps_to_match(config_path: str, name: str, run_over: list[str], cfg: Config, ref: str, results: list[dict],
                    root: Path, check_paths: bool = True) -> tuple[list[str], Config]:
    """A steps_from run's overrides and config with the steps its reference actually trained:
    in this invocation, else as exported by an earlier one, else as planned from its config
    (a run that ends when its data does trains fewer steps than its max_steps)."""
    done = {r["run"]: r for r in results}
    if ref in done and done[ref]["status"] != "ok":
        raise RuntimeError(f"steps_from {ref!r}: that run failed, so its step count is unknown")
    if ref in done:
        steps, how = done[ref]["steps"], "trained"
    elif (root / ref / "hf" / "delia_export.json").is_file():
        steps, how = json.loads((root / ref / "hf" / "delia_export.json").read_text())["step"], "exported"
    else:
        print(f"[experiment] {name}: {cfg.train.max_steps} steps, {ref}'s planned max_steps ({ref} did not run here)",
              flush=True)
        return run_over, cfg
    print(f"[experiment] {name}: {steps} steps, as many as {ref} {how}", flush=True)
    if steps == cfg.train.max_steps:
        return run_over, cfg
    run_over = [*run_over, f"train.max_steps={steps}"]
    return run_over, load_config(config_path, run_over, check_paths=check_paths)


def _one_run(config_path: str, name: str, run_dir: Path, run_over: list[str], cfg: Config, nproc: int,
             resume: bool, tags: dict[str, str], meta: dict) -> dict:
    from ..checkpoint.export import export_checkpoint
    from ..eval.runner import evaluate

    t0 = time.time()
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    parent = tags.get(PARENT_RUN)
    print(f"[experiment] {name}: training ({' '.join(chosen_overrides(run_over)) or 'base config'})", flush=True)
    try:
        # Quoted: an all-digit run id would otherwise be read as a YAML number.
        train_run(config_path, run_over + ([f'tracking.parent_run_id="{parent}"'] if parent else []), cfg,
                  run_dir, nproc)
        hf_dir = export_checkpoint(cfg.checkpoint_dir, run_dir / "hf")
    except Exception:
        mark_failed(cfg, run_dir, tags)
        raise
    info = json.loads((hf_dir / "delia_export.json").read_text())
    print(f"[experiment] {name}: evaluating {hf_dir}", flush=True)
    with tracked(cfg, run_dir, run_id=info["run_id"], tags=tags) as tracker:
        scores = evaluate(hf_dir, cfg, tracker=tracker, step=info["step"])
    last = _last_metrics(run_dir)
    print(f"[experiment] {name}: done in {time.time() - t0:.0f} s", flush=True)
    return {"run": name, **meta, "status": "ok", "run_id": info["run_id"], "run_dir": str(run_dir),
            "steps": info["step"],
            "diverse_share": last.get("share/diverse", 0.0),
            "train_loss_first": last["first_loss"], "train_loss_last": last["loss"],
            **{k: v for k, v in last.items() if k.startswith(("tokens/", "samples/"))},
            **scores, "wall_s": time.time() - t0}


def evaluate_base(config_path: str, overrides: list[str], root: Path, parent_run_id: str | None = None) -> dict:
    """The untrained model (model.name_or_path, new tokens added and initialised as the runs'
    step 0 has them) scored like the runs,
    as MLflow run "base": the before-training reference every trained row is read against."""
    from ..eval.runner import evaluate
    from ..tracking import default_uri

    t0 = time.time()
    base = load_config(config_path, overrides)
    run_dir = root / "base"
    run_over = [f"run_dir={run_dir}", f"tracking.uri={default_uri(base.tracking, root)}",
                "tracking.run_name=base", "eval.grad_cosine=false", *overrides]
    cfg = load_config(config_path, run_over)
    model_dir = cfg.model.name_or_path
    if not model_dir or not Path(model_dir).is_dir():
        raise ValueError(f"experiment.eval_base needs model.name_or_path to be a local model directory, "
                         f"got {model_dir!r}")
    print(f"[experiment] base: evaluating the untrained model {model_dir}", flush=True)
    if cfg.model.new_tokens:  # the tokens added as a run adds them at step 0
        from ..model.build import save_initialised
        model_dir = save_initialised(cfg.model, run_dir / "hf", cfg.train.precision, cfg.train.seed)
    tags = child_tags("base", run_over, list(overrides), cfg, config_path, parent_run_id, kind="base")
    tags[NOTE] = (f"**base**: `{cfg.model.name_or_path}` untrained (new tokens added and initialised as at a "
                  f"run's step 0), evaluated like every run of the matrix")
    with tracked(cfg, run_dir, tags=tags) as tracker:
        scores = evaluate(model_dir, cfg, tracker=tracker, step=0)
    print(f"[experiment] base: done in {time.time() - t0:.0f} s", flush=True)
    return {"run": "base", "status": "ok", "steps": 0, **scores, "wall_s": time.time() - t0}


def run_experiment(config_path: str, overrides: list[str] = (), only: list[str] | None = None,
                   resume: bool = False, plan: list | None = None, parent_run_id: str | None = None) -> list[dict]:
    """Trains, exports and evaluates each run. Without `resume` an existing run directory is
    started over, so a changed config never silently continues an old checkpoint. A failed
    run is recorded ({"status": "failed", "error": ...}) and the matrix goes on; results are
    written to <run_dir>/experiment_results.json after every run. Each run is an MLflow child
    of `parent_run_id` (the matrix's parent run) when given."""
    runs_only = [o for o in only if o != "base"] if only else None
    if plan is None:
        plan = plan_runs(config_path, overrides, runs_only or None)
    if only and not runs_only:  # --only base
        plan = []
    base_cfg = load_config(config_path, overrides)
    root = Path(base_cfg.run_dir)
    nproc = base_cfg.experiment.nproc
    results = []

    def save() -> None:
        atomic.write_text(root / "experiment_results.json", json.dumps(results, indent=1))

    if base_cfg.experiment.eval_base and (not only or "base" in only):
        try:
            results.append(evaluate_base(config_path, list(overrides), root, parent_run_id))
        except Exception as e:
            log.error("base evaluation failed: %s", e)
            print(f"[experiment] base: FAILED: {e}", flush=True)
            results.append({"run": "base", "status": "failed", "run_dir": str(root / "base"), "error": str(e)})
        save()
    entries = {name: (spec, seed) for name, spec, seed in expand_runs(base_cfg)}
    for name, run_dir, run_over, cfg in plan:
        spec, seed = entries[name]
        meta = {"group": spec.name, **({"seed": seed} if seed is not None else {}),
                **({"steps_from": seeded(spec.steps_from, seed)} if spec.steps_from else {})}
        try:
            if spec.steps_from:
                run_over, cfg = _steps_to_match(config_path, name, run_over, cfg, meta["steps_from"], results, root)
            tags = child_tags(name, run_over, list(overrides), cfg, config_path, parent_run_id)
            results.append(_one_run(config_path, name, run_dir, run_over, cfg, nproc, resume, tags, meta))
        except Exception as e:  # one broken run must not hide the others' results
            log.error("run %s failed: %s", name, e)
            print(f"[experiment] {name}: FAILED: {e}", flush=True)
            results.append({"run": name, **meta, "status": "failed", "run_dir": str(run_dir), "error": str(e)})
        save()
    return results
