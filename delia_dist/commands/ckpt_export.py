"""`delia ckpt export`: a training checkpoint as a Hugging Face model directory."""
NAME = "ckpt export"
HELP = "write an HF model dir (safetensors + tokenizer with new tokens) from a checkpoint"
DESCRIPTION = """Merge a sharded ZeRO-3 checkpoint into a Hugging Face directory that
transformers and vLLM load. CKPT is a step_N directory or a checkpoint root (its `latest`
is used). LoRA adapters are merged into the base weights. Streams one parameter at a time
from the ZeRO-3 shards, so memory stays near the largest parameter (~12 GB for a 70B)."""


def add_arguments(p):
    p.add_argument("ckpt", help="checkpoint dir (runs/x/checkpoints/step_100) or the checkpoints root")
    p.add_argument("out", help="output directory")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (default: the model's configured dtype)")


def run(args) -> int:
    from ..checkpoint.export import export_checkpoint
    from ..errors import UserError
    try:
        out = export_checkpoint(args.ckpt, args.out, args.dtype)
    except (FileNotFoundError, ValueError) as e:  # missing/damaged checkpoint, names it cannot map
        raise UserError(str(e)) from None
    print(f"exported {args.ckpt} -> {out}")
    return 0
