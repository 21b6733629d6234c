"""`delia experiment`: train, export and evaluate every run of the matrix, then compare."""
NAME = "experiment"
HELP = "run the experiment matrix (baseline, DELIA scales, ablations) and print the comparison"
DESCRIPTION = """Each entry of experiment.runs is the base config plus overrides. Every run is
trained (--nproc ranks, ZeRO-3; or Slurm with experiment.backend=slurm), exported,
evaluated and logged as its own MLflow run, a child of one parent run per invocation (the
MLflow UI groups them); then a comparison table is printed and a report (markdown + plots)
written to <run_dir>/report and logged as the parent run's artifacts."""


def add_arguments(p):
    p.add_argument("config", help="YAML config with an experiment section, e.g. configs/tiny_cpu.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run (repeatable)")
    p.add_argument("--only", default=None, help="comma-separated run names to run")
    p.add_argument("--resume", action="store_true",
                   help="continue runs from their checkpoints instead of starting them over")
    p.add_argument("--dry-run", action="store_true",
                   help="print each run's resolved token shares, diverse samples per downstream sample and "
                        "expected steps (from the shard manifests); train nothing")
    p.add_argument("--world-size", type=int, default=None,
                   help="ranks per run for --dry-run's steps (default: experiment.nproc; e.g. 64 for 8x8 GPUs)")


def run(args) -> int:
    from pathlib import Path

    from ..config import load_config
    from ..experiment.matrix import plan_runs, run_experiment
    from ..experiment.run_tracking import matrix_parent, review_url
    from ..tracking import default_uri

    only = args.only.split(",") if args.only else None
    runs_only = [o for o in only if o != "base"] if only else None
    if args.dry_run:
        from ..experiment.dry_run import dry_run_rows, dry_run_table
        rows = dry_run_rows(args.config, args.overrides, only, args.world_size)
        print(dry_run_table(rows))
        print(f"\n{len(rows)} run(s) at {rows[0]['world']} rank(s) each; expected steps assume full rows "
              f"(packing padding adds a few percent); nothing was trained")
        return 0
    cfg = load_config(args.config, args.overrides)
    plan = plan_runs(args.config, args.overrides, runs_only or None)
    with matrix_parent(cfg, args.config, plan, args.overrides, args.resume) as parent:
        results = run_experiment(args.config, args.overrides, only, resume=args.resume, plan=plan,
                                 parent_run_id=parent.run_id)
        report = _report(results, cfg, Path(cfg.run_dir) / "report")
        if report is not None:
            parent.log_artifact(report.parent)  # as report/...
        failed = [r for r in results if r["status"] != "ok"]
        if failed:
            parent.set_tags({"delia.failed_runs": ",".join(r["run"] for r in failed)})
    uri = default_uri(cfg.tracking, Path(cfg.run_dir))
    print(f"\nreport:       {f'{report}  (plots: {report.parent}/*.png)' if report else '(none: no run finished)'}")
    print(f"MLflow store: {uri}  (experiment '{cfg.tracking.experiment}', parent run {parent.run_id})")
    print(f"browse:       .venv/bin/mlflow ui --backend-store-uri {uri}")
    if parent.experiment_id:
        print(f"              then {review_url('http://127.0.0.1:5000', parent.experiment_id)}")
    for r in failed:
        print(f"FAILED run {r['run']}: {r['error'].splitlines()[0]} (see {r['run_dir']}/train.log)")
    return 1 if failed else 0


def _report(results: list[dict], cfg, out_dir):
    """Prints the comparison (and the format task's intervals) and writes report.md, the plots
    and comparison.txt to out_dir; None when no run finished."""
    from pathlib import Path

    from .. import atomic
    from ..eval.summary import has_intervals, interval_table, reading
    from ..experiment.report import comparison_table, terminal_width, write_report

    done = [r for r in results if r["status"] == "ok"]
    print()
    if not done:
        return None
    table = comparison_table(done, max_width=terminal_width())
    print(table)
    text = [table]
    if has_intervals(done):
        task = next((t for t in cfg.eval.tasks if t.kind == "format"), None)
        n = None
        if task is not None and Path(task.path).is_file():
            n = sum(1 for line in Path(task.path).read_text().splitlines() if line.strip())
            n = min(n, task.max_samples) if task.max_samples else n
        text += ["", "format task, 95% bootstrap intervals over the held-out examples:", interval_table(done)]
        text += [f"- {line}" for line in reading(done, n)]
        print("\n".join(text[1:]))
    if any("seed" in r for r in done):
        from ..experiment.seeds import METHOD, seed_table
        text += ["", f"mean over seeds [{METHOD}]:", seed_table(done)]
        print("\n".join(text[-2:]))
    report = write_report(done, out_dir)
    atomic.write_text(Path(out_dir) / "comparison.txt", "\n".join(text) + "\n")
    return report
