"""`delia config show`: print the resolved config, so a user sees exactly what will run."""
NAME = "config show"
HELP = "print a config with overrides applied, after validation"


def add_arguments(p):
    p.add_argument("config", help="YAML file, e.g. configs/llama3_70b.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value, e.g. --set train.lr=1e-5 (repeatable; list items by "
                        "index or name: data.sources.diverse.weight=0.9)")
    p.add_argument("--check-paths", action="store_true",
                   help="also require the local files the config names (model, shards, eval data) to exist")
    p.add_argument("--deepspeed-json", action="store_true",
                   help="print the DeepSpeed JSON this config renders to (world size from --world-size)")
    p.add_argument("--world-size", type=int, default=1)


def run(args) -> int:
    import json

    from ..config import dump_yaml, load_config
    cfg = load_config(args.config, args.overrides, check_paths=args.check_paths)
    if args.deepspeed_json:
        t = cfg.train
        print(json.dumps(cfg.deepspeed.render(
            micro_batch_size=t.micro_batch_size, grad_accum=t.grad_accum, world_size=args.world_size,
            precision=t.precision, lr=t.lr, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay,
            grad_clip=t.grad_clip), indent=2))
    else:
        print(dump_yaml(cfg), end="")
    return 0
