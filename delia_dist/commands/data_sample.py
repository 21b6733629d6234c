"""`delia data sample`: diverse data by self-sampling with vLLM (DELIA stage 1)."""
NAME = "data sample"
HELP = "re-answer queries with the model through vLLM and write shards (resumable by part)"
DESCRIPTION = """Renders each query with the model's chat template (with a reference answer:
[system, query, reference, query], as the DELIA recipe does), generates with vLLM
(in ./.venv-gen, from scripts/install.sh --gen), and writes webdataset shards per part
with a manifest. With Slurm array jobs each task takes its share of parts (task index and
count default to the array's); finished parts are skipped on rerun."""


def add_arguments(p):
    p.add_argument("--model", required=True, help="HF model directory (e.g. from `delia ckpt export`)")
    p.add_argument("--input", required=True, help="queries: JSONL {query, reference?} or chat records, or an HF dataset dir")
    p.add_argument("--out", required=True, help="output directory (part-NNNNN/ subdirectories)")
    p.add_argument("--config", default=None, help="YAML config (generate.sample section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--task-index", type=int, default=None)
    p.add_argument("--num-tasks", type=int, default=None)
    p.add_argument("--parts-per-task", type=int, default=1)


def run(args) -> int:
    import logging

    from launcher.env import detect_env

    from ..config import GenerateConfig, load_config, loader
    from ..gen.sample import sample

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.config:
        cfg = load_config(args.config, args.overrides).generate.sample
    else:
        cfg = loader.load(GenerateConfig, None, [o.removeprefix("generate.") for o in args.overrides]).sample
    env = detect_env()
    index = args.task_index if args.task_index is not None else (env.array_task_id or 0)
    count = args.num_tasks if args.num_tasks is not None else (env.array_task_count or 1)
    parts = sample(args.model, args.input, args.out, cfg, index, count, args.parts_per_task)
    for p in parts:
        print(p)
    return 0
