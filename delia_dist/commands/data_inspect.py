"""`delia data inspect`: check shards before a long run and look at what training will see.

Every member goes through the decoder training uses (plus a parse of each record's JSON,
which training only reads when it re-tokenizes), so a shard that inspects clean trains
without skips; bad members are counted by the reason training would give."""
NAME = "data inspect"
HELP = "verify shards (every member decodes as in training, counts match the manifest) and show samples"
LISTED_PER_REASON = 5


def add_arguments(p):
    p.add_argument("shards", help="manifest.json, shard directory, glob or URL (as in data.sources[].shards)")
    p.add_argument("--tokenizer", help="decode samples and check ids against this tokenizer")
    p.add_argument("-n", "--show", type=int, default=2, help="samples to print (loss tokens in [[...]])")
    p.add_argument("--quick", action="store_true", help="only the manifest and the first shard")


def show(tok, url, key, ids, mask) -> str:
    pieces, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            text = tok.decode(ids[start:i].tolist())
            pieces.append(f"[[{text}]]" if mask[start] else text)
            start = i
    return f"--- {url} {key} ({len(ids)} tokens)\n{''.join(pieces)}"


def run(args) -> int:
    import numpy as np

    from ..data.decode import DecodeRules, Skip, decode
    from ..data.errors import DataError
    from ..data.shards import iter_shard
    from ..data.sources import load_tokenizer, resolve_shards

    urls, manifest, where = resolve_shards(args.shards)
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else None
    if manifest:
        print(f"{where}: {len(manifest['shards'])} shards, {manifest['samples']} samples, "
              f"{manifest['tokens']} tokens; tokenizer {manifest['tokenizer']}")
    expected = {s["url"]: s["samples"] for s in manifest["shards"]} if manifest else {}
    vocab = len(tok) if tok is not None else ((manifest or {}).get("tokenizer") or {}).get("vocab_size")
    # no seq_len here: overlong samples are truncated in training, not bad
    rules = DecodeRules(source=0, name="inspect", seed=0, vocab_size=vocab or 2**31 - 1, seq_len=2**31 - 1,
                        check_json=True)
    bad: dict[str, int] = {}

    def count(reason: str, message: str):
        n = bad[reason] = bad.get(reason, 0) + 1
        if n <= LISTED_PER_REASON:
            print(f"bad ({reason}): {message}")

    urls = urls[:1] if args.quick else urls
    samples = tokens = shown = 0
    for url in urls:
        n = 0
        try:
            for key, parts in iter_shard(url):
                n += 1
                got = decode(rules, url, key, parts, 0)
                if isinstance(got, Skip):
                    count(got.reason, f"{got.where}: {got.message}")
                    continue
                ids = got.sample.ids
                tokens += len(ids)
                if tok is not None and shown < args.show:
                    shown += 1
                    print(show(tok, url, key, ids, np.frombuffer(parts["mask"], dtype=np.uint8)))
        except DataError as e:
            count("corrupt_shard", str(e))
        else:
            if url in expected and expected[url] != n:
                count("count_mismatch", f"{url}: {n} samples, manifest lists {expected[url]}")
        samples += n
    reasons = ", ".join(f"{r} {c}" for r, c in sorted(bad.items()))
    print(f"read {samples} samples, {tokens} tokens from {len(urls)} shard(s); "
          f"{sum(bad.values())} bad" + (f" ({reasons})" if bad else ""))
    return 1 if bad else 0
