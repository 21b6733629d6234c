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
    p.add_argument("--input", required=True,
                   help="queries: JSONL {query, reference?} or chat records, or an HF dataset dir")
    p.add_argument("--out", required=True, help="output directory (part-NNNNN/ subdirectories)")
    p.add_argument("--config", default=None, help="YAML config (generate.sample section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--task-index", type=int, default=None,
                   help="this task's share (default: from the Slurm array task id and rank)")
    p.add_argument("--num-tasks", type=int, default=None,
                   help="number of shares (default: Slurm array task count x ranks, else 1)")
    p.add_argument("--parts-per-task", type=int, default=1,
                   help="parts per task: smaller parts lose less work when a task is killed")


def run(args) -> int:
    import json
    import logging

    from launcher.env import detect_env

    from ..config import GenerateConfig, load_config, loader
    from ..errors import UserError
    from ..gen.sample import DONE, sample

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.config:
        cfg = load_config(args.config, args.overrides).generate.sample
    else:
        cfg = loader.load(GenerateConfig, None, [o.removeprefix("generate.") for o in args.overrides]).sample
    # Defaults: one share per (array task, rank) pair, so an array job, a multi-task srun
    # and both combined each split the input without overlap.
    env = detect_env()
    array_id, array_count = env.array_task_id, env.array_task_count or 1
    if args.task_index is None and array_id is not None and not 0 <= array_id < array_count:
        raise UserError(f"Slurm array task id {array_id} with {array_count} tasks: submit with "
                        f"--array=0-{array_count - 1} (ids 0..N-1), or pass --task-index/--num-tasks")
    index = args.task_index if args.task_index is not None else (array_id or 0) * env.world_size + env.rank
    count = args.num_tasks if args.num_tasks is not None else array_count * env.world_size
    parts = sample(args.model, args.input, args.out, cfg, index, count, args.parts_per_task)
    samples = tokens = 0
    for p in parts:
        done = json.loads((p / DONE).read_text())
        samples, tokens = samples + done["samples"], tokens + done["tokens"]
        print(p)
    print(f"task {index}/{count}: {len(parts)} part(s), {samples} samples, {tokens} tokens")
    return 0
