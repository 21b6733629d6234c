"""`delia data shard`: records (JSONL, HF datasets on disk) -> tokenized tar shards + manifest.

Tokenizing once here means training only reads ids; the record JSON is stored too, so
the reader can re-tokenize when the training tokenizer gained tokens (e.g. <sep>).
"""
NAME = "data shard"
HELP = "tokenize JSONL / HF dataset records into webdataset tar shards with a manifest"


def add_arguments(p):
    p.add_argument("inputs", nargs="+",
                   help="JSONL files (.jsonl, .jsonl.gz), a directory written by "
                        "datasets.save_to_disk, or a local path load_dataset understands")
    p.add_argument("--out", required=True, help="output directory (shards + manifest.json)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: model.tokenizer of --config)")
    p.add_argument("--config", help="YAML config to take the tokenizer from")
    p.add_argument("--split", default="train", help="dataset split for load_dataset inputs")
    p.add_argument("--max-shard-mb", type=float, default=256.0, help="target shard size in MB")
    p.add_argument("--prefix", default="shard", help="shard file name prefix")
    p.add_argument("--on-bad", choices=("skip", "error"), default="skip",
                   help="a malformed record is counted and logged (skip) or stops the run (error)")
    p.add_argument("--limit", type=int, help="stop after this many records")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    import logging

    from tqdm import tqdm

    from ..data import RecordError, ShardWriter
    from ..data.sources import iter_input_records, load_tokenizer
    from ..errors import UserError

    log = logging.getLogger("delia_dist.data")
    tok_path = args.tokenizer
    if tok_path is None:
        if not args.config:
            raise UserError("give --tokenizer DIR or --config CONFIG (its model.tokenizer)")
        from ..config import load_config
        tok_path = load_config(args.config).model.tokenizer
    tokenizer = load_tokenizer(tok_path)
    skipped: dict[str, int] = {}
    per_input: dict[str, list[int]] = {}  # input -> [samples, loss tokens]
    written = 0
    bar = tqdm(desc="shard", unit=" rec", disable=args.no_progress)
    with ShardWriter(args.out, tokenizer, max_shard_bytes=int(args.max_shard_mb * 2**20),
                     prefix=args.prefix) as w:
        for spec in args.inputs:
            counts = per_input.setdefault(spec, [0, 0])
            for where, record in iter_input_records([spec], split=args.split):
                if args.limit is not None and written >= args.limit:
                    break
                try:
                    if isinstance(record, RecordError):
                        raise record
                    before = w.loss_tokens
                    w.write(record)
                    written += 1
                    counts[0] += 1
                    counts[1] += w.loss_tokens - before
                except RecordError as e:
                    if args.on_bad == "error":
                        raise UserError(f"{where}: {e}") from None
                    skipped[e.reason] = skipped.get(e.reason, 0) + 1
                    if skipped[e.reason] <= 5:
                        log.warning("%s: skipped (%s): %s", where, e.reason, e)
                bar.update(1)
                bar.set_postfix(shards=len(w.shards), tokens=w.tokens, refresh=False)
        bar.close()
        empty = {spec: n for spec, (n, loss) in per_input.items() if n and not loss}
        if empty:
            w.discard()
            raise UserError("no loss token in " + ", ".join(f"{spec} ({n} samples)" for spec, n in empty.items())
                            + f": the chat template of {tok_path} marked no assistant reply in them; "
                            "nothing written")
    print(f"{args.out}: {w.samples} samples, {w.tokens} tokens ({w.loss_tokens} with loss) in "
          f"{len(w.shards)} shards; skipped {sum(skipped.values())}"
          + (f" {skipped}" if skipped else ""))
    return 0
