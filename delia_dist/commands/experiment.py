"""`delia experiment`: train, export and evaluate every run of the matrix, then compare."""
NAME = "experiment"
HELP = "run the experiment matrix (baseline, DELIA scales, ablations) and print the comparison"
DESCRIPTION = """Each entry of experiment.runs is the base config plus overrides. Every run is
trained (--nproc ranks, ZeRO-3; or Slurm with experiment.backend=slurm), exported,
evaluated and logged as its own MLflow run in one experiment; then a comparison table is
printed and a report (markdown + plots) written to <run_dir>/report."""


def add_arguments(p):
    p.add_argument("config", help="YAML config with an experiment section, e.g. configs/tiny_cpu.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run (repeatable)")
    p.add_argument("--only", default=None, help="comma-separated run names to run")
    p.add_argument("--resume", action="store_true",
                   help="continue runs from their checkpoints instead of starting them over")


def run(args) -> int:
    from pathlib import Path

    from ..config import load_config
    from ..eval.summary import has_intervals, interval_table, reading
    from ..experiment.matrix import run_experiment
    from ..experiment.report import comparison_table, terminal_width, write_report
    from ..tracking import default_uri

    results = run_experiment(args.config, args.overrides, args.only.split(",") if args.only else None,
                             resume=args.resume)
    cfg = load_config(args.config, args.overrides)
    done = [r for r in results if r["status"] == "ok"]
    failed = [r for r in results if r["status"] != "ok"]
    print()
    if done:
        print(comparison_table(done, max_width=terminal_width()))
        if has_intervals(done):
            task = next((t for t in cfg.eval.tasks if t.kind == "format"), None)
            n = None
            if task is not None and Path(task.path).is_file():
                n = sum(1 for line in Path(task.path).read_text().splitlines() if line.strip())
                n = min(n, task.max_samples) if task.max_samples else n
            print("\nformat task, 95% bootstrap intervals over the held-out examples:")
            print(interval_table(done))
            for line in reading(done, n):
                print(f"- {line}")
        if any("seed" in r for r in done):
            from ..experiment.seeds import METHOD, seed_table
            print(f"\nmean over seeds [{METHOD}]:")
            print(seed_table(done))
        out = write_report(done, Path(cfg.run_dir) / "report")
        out = f"{out}  (plots: {Path(out).parent}/*.png)"
    else:
        out = "(none: no run finished)"
    print(f"\nreport:       {out}")
    print(f"MLflow store: {default_uri(cfg.tracking, Path(cfg.run_dir))}  (experiment '{cfg.tracking.experiment}')")
    print(f"browse:       .venv/bin/mlflow ui --backend-store-uri {default_uri(cfg.tracking, Path(cfg.run_dir))}")
    for r in failed:
        print(f"FAILED run {r['run']}: {r['error'].splitlines()[0]} (see {r['run_dir']}/train.log)")
    return 1 if failed else 0
