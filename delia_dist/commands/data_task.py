"""`delia data task`: the downstream task of the real-model main job (no tokenizer, no shards)."""
NAME = "data task"
HELP = "write the <sep> judging task for a real model: train records, instruction, eval pool"
DESCRIPTION = """Writes ROOT/data/downstream_train.jsonl, instructions.jsonl (for `delia data
diversify`) and eval_pool.jsonl. After diversify, `delia data heldout` splits the
paraphrases into training ones and held-out ones that word the evaluation instructions."""


def add_arguments(p):
    p.add_argument("root", help="workspace, e.g. runs/smollm2")
    p.add_argument("--train", type=int, default=400, help="training examples")
    p.add_argument("--eval", type=int, default=100, help="evaluation examples")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from ..data.synth import prepare_real_task
    for k, v in prepare_real_task(args.root, args.train, args.eval, args.seed).items():
        print(f"{k:14s} {v}")
    return 0
