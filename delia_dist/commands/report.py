"""`delia report`: compare the runs of an MLflow experiment side by side."""
NAME = "report"
HELP = "compare the runs of an MLflow experiment: terminal table, report.md and PNG plots"
DESCRIPTION = """Reads the runs of EXPERIMENT from MLflow (final and best eval metrics, loss per
source, tokens per source, steps, wall time), prints a table and writes report.md with
plots (loss per source over steps, eval metrics vs diverse-data share, special-token
distances) to --out."""


def add_arguments(p):
    p.add_argument("experiment", help="MLflow experiment name, e.g. tiny-delia")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///runs/tiny/mlflow.db)")
    p.add_argument("--runs", default=None, help="comma-separated run ids (default: all runs)")
    p.add_argument("--out", default="report", help="output directory (default ./report)")


def run(args) -> int:
    import os
    from pathlib import Path

    from ..report import build_report
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('runs/tiny/mlflow.db').resolve()}"
    path = build_report(args.experiment, uri, args.out, args.runs.split(",") if args.runs else None)
    print(f"\nreport: {path}")
    return 0
