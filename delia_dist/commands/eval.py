"""`delia eval`: score an exported model on the configured tasks."""
NAME = "eval"
HELP = "evaluate an HF model dir (from `delia ckpt export`) on the config's eval tasks"
DESCRIPTION = """Generate answers (vLLM if installed, else transformers), score them
(BLEU/chrF, BLEURT with eval.bleurt_checkpoint; accuracy/precision/recall/F1/well-formed
for the <sep> format task), measure special-token alignment, and log everything to the
training run in MLflow (run id from the export, or --run-id)."""


def add_arguments(p):
    p.add_argument("model_dir", help="HF directory written by `delia ckpt export`")
    p.add_argument("--config", required=True, help="YAML config with an eval section")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run-id", default=None, help="MLflow run to log into (default: the exported run)")
    p.add_argument("--no-tracking", action="store_true", help="print only; log nothing to MLflow")


def run(args) -> int:
    import json
    from pathlib import Path

    from ..config import load_config
    from ..errors import UserError
    from ..eval.runner import evaluate
    from ..tracking import Tracker

    cfg = load_config(args.config, args.overrides, check_paths=True)
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir} is not an HF model directory (no config.json); run `delia ckpt export` first")
    info_path = model_dir / "delia_export.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    tracker = None
    if not args.no_tracking:
        tracker = Tracker(cfg.tracking, cfg.run_dir, enabled=True)
        tracker.load_state_dict({"run_id": args.run_id or info.get("run_id")})
        tracker.start({"name": cfg.name, "eval_of": str(model_dir)}, tags={})
    scores = evaluate(model_dir, cfg, tracker=tracker, step=info.get("step", 0))
    if tracker is not None:
        tracker.close("FINISHED")
    width = max(len(k) for k in scores) if scores else 10
    for k, v in sorted(scores.items()):
        print(f"{k:{width}s}  {v:.4f}")
    return 0
