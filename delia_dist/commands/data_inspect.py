"""`delia data inspect`: check shards before a long run and look at what training will see."""
NAME = "data inspect"
HELP = "verify shards (every member readable, counts match the manifest) and show samples"


def add_arguments(p):
    p.add_argument("shards", help="manifest.json, shard directory, glob or URL (as in data.sources[].shards)")
    p.add_argument("--tokenizer", help="decode samples and check ids against this tokenizer")
    p.add_argument("-n", "--show", type=int, default=2, help="samples to print (loss tokens in [[...]])")
    p.add_argument("--quick", action="store_true", help="only the manifest and the first shard")


def run(args) -> int:
    import numpy as np

    from ..data.errors import DataError
    from ..data.shards import iter_shard
    from ..data.sources import load_tokenizer, resolve_shards

    urls, manifest, where = resolve_shards(args.shards)
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else None
    if manifest:
        print(f"{where}: {len(manifest['shards'])} shards, {manifest['samples']} samples, "
              f"{manifest['tokens']} tokens; tokenizer {manifest['tokenizer']}")
    expected = {s["url"]: s["samples"] for s in manifest["shards"]} if manifest else {}
    samples = tokens = bad = shown = 0
    for url in urls[:1] if args.quick else urls:
        n = 0
        for key, parts in iter_shard(url):
            n += 1
            ids = np.frombuffer(parts.get("ids", b""), dtype="<i4") if len(parts.get("ids", b"")) % 4 == 0 else None
            mask = np.frombuffer(parts.get("mask", b""), dtype=np.uint8)
            if ids is None or len(ids) != len(mask) or len(ids) == 0 or \
                    (tok is not None and (ids.min() < 0 or ids.max() >= len(tok))):
                bad += 1
                print(f"{url} member {key}: bad ids/mask")
                continue
            tokens += len(ids)
            if tok is not None and shown < args.show:
                shown += 1
                pieces, start = [], 0
                for i in range(1, len(ids) + 1):
                    if i == len(ids) or mask[i] != mask[start]:
                        text = tok.decode(ids[start:i].tolist())
                        pieces.append(f"[[{text}]]" if mask[start] else text)
                        start = i
                print(f"--- {url} {key} ({len(ids)} tokens)\n{''.join(pieces)}")
        if url in expected and expected[url] != n:
            raise DataError(f"{url}: {n} samples, manifest lists {expected[url]}")
        samples += n
    print(f"read {samples} samples, {tokens} tokens from {len(urls[:1] if args.quick else urls)} shard(s); "
          f"{bad} bad")
    return 1 if bad else 0
