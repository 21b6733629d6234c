"""`delia data heldout`: keep some instruction paraphrases out of training for evaluation."""
NAME = "data heldout"
HELP = "split diversify's paraphrases into training ones and held-out ones that word the eval set"
DESCRIPTION = """The last --heldout paraphrases of each instruction go only into the evaluation
records (taken from --eval-pool, round-robin); the rest are written for
data.sources.*.paraphrases. The model is then scored on wordings it never trained on."""


def add_arguments(p):
    p.add_argument("paraphrases", help="JSONL from `delia data diversify`")
    p.add_argument("--eval-pool", required=True, help="evaluation records (instruction/fields/response)")
    p.add_argument("--train-out", required=True, help="paraphrases for training")
    p.add_argument("--eval-out", required=True, help="evaluation records with held-out instructions")
    p.add_argument("--heldout", type=int, default=3, help="paraphrases held out per instruction")


def run(args) -> int:
    from ..data.synth import split_paraphrases
    from ..errors import UserError
    try:
        n_train, n_held = split_paraphrases(args.paraphrases, args.eval_pool, args.train_out, args.eval_out,
                                            args.heldout)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{args.paraphrases}: {e}") from None
    print(f"{n_train} training paraphrases -> {args.train_out}; {n_held} held out -> {args.eval_out}")
    return 0
