"""`delia data synth`: the small task and diverse data the CPU main job trains on."""
NAME = "data synth"
HELP = "write a tiny tokenizer, toy tasks, diverse chats, paraphrases and shards (no downloads)"
DESCRIPTION = """Make everything configs/tiny_cpu.yaml needs under ROOT (default runs/tiny):
a BPE tokenizer, a toy translation task (Fenish -> English), a DELIA-style formatted-text
task with <sep>, a diverse chat corpus, rule-made instruction paraphrases, and webdataset
shards. Real runs use `delia data sample` / `delia data diversify` / `delia data shard`."""


def add_arguments(p):
    p.add_argument("root", nargs="?", default="runs/tiny")
    p.add_argument("--train", type=int, default=400, help="downstream training examples (half per task)")
    p.add_argument("--eval", type=int, default=40, help="evaluation examples per task")
    p.add_argument("--diverse", type=int, default=6000, help="diverse chat records")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from ..data.synth import prepare_workspace
    paths = prepare_workspace(args.root, n_train=args.train, n_eval=args.eval, n_diverse=args.diverse,
                              seed=args.seed)
    for k, v in paths.items():
        print(f"{k:18s} {v}")
    print("note: no LLM endpoint is used here, so the instruction paraphrases are hand-written "
          f"rewrites ({paths['paraphrases']}), not LLM paraphrases as in the paper")
    return 0
