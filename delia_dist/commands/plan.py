"""`delia plan`: per-GPU memory and throughput for a config on a given cluster."""
NAME = "plan"
HELP = "estimate per-GPU memory (ZeRO sharding, activations, logits) and tokens/s before submitting"
DESCRIPTION = """Estimate whether CONFIG fits on NODES x GPUS-PER-NODE GPUs and how fast it trains.

Counts parameters from the model config (model.config, a local config.json, or a built-in
table of known hub architectures: no downloads), splits weights, gradients and Adam states
by the ZeRO stage, adds ZeRO-3's gathered working set, activations (with/without
activation checkpointing) and logits (fused or not), and prints tokens/s at the given MFU.
Exit code 0 when it fits, 1 when it does not (with what to change), 2 on bad input.
Example: delia plan configs/llama3_70b.yaml --nodes 8 --gpus-per-node 8 --gpu h100-80gb"""


def add_arguments(p):
    from ..plan import GPUS
    p.add_argument("config", help="YAML config, e.g. configs/llama3_70b.yaml")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, required=True)
    p.add_argument("--gpu", choices=sorted(GPUS), default="h100-80gb")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation to assume (default 0.4)")
    p.add_argument("--vocab", type=int, default=None,
                   help="vocabulary size when neither the model config nor a local tokenizer gives it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args) -> int:
    from ..config import load_config
    from ..errors import UserError
    from ..plan import PlanError, plan

    cfg = load_config(args.config, args.overrides, check_paths=False)
    try:
        result = plan(cfg, nodes=args.nodes, gpus_per_node=args.gpus_per_node, gpu=args.gpu, mfu=args.mfu,
                      vocab=args.vocab)
    except PlanError as e:
        raise UserError(f"{args.config}: {e}") from None
    print(result.to_json() if args.json else result.render())
    return 0 if result.fits else 1
