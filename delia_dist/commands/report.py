"""`delia report`: compare the runs of an MLflow experiment side by side."""
NAME = "report"
HELP = "compare the runs of an MLflow experiment: terminal table, report.md and PNG plots"
DESCRIPTION = """Reads the runs of EXPERIMENT from MLflow (final and best eval metrics, loss and
tokens per source, steps, wall time and GPU-hours), prints a table and writes report.md with
plots (loss per source over training tokens, eval metrics vs diverse-data share,
special-token distances over steps) to --out; --summary-run also logs them to MLflow."""


def add_arguments(p):
    p.add_argument("experiment", help="MLflow experiment name, e.g. tiny-delia")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///runs/tiny/mlflow.db)")
    p.add_argument("--runs", default=None, help="comma-separated run ids (default: all runs)")
    p.add_argument("--out", default="report", help="output directory (default ./report)")
    p.add_argument("--summary-run", action="store_true",
                   help="also log the report as artifacts of a new run tagged delia.kind=report")


def run(args) -> int:
    import os
    from pathlib import Path

    from ..experiment.report import build_report
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('runs/tiny/mlflow.db').resolve()}"
    runs = [r.strip() for r in args.runs.split(",") if r.strip()] if args.runs else None
    path = build_report(args.experiment, uri, args.out, runs, summary_run=args.summary_run)
    print(f"\nreport: {path}  (plots: {Path(path).parent}/*.png)")
    return 0
