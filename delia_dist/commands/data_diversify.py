"""`delia data diversify`: paraphrase task instructions through an OpenAI-compatible endpoint."""
NAME = "data diversify"
HELP = "K anisotropic paraphrases per task instruction (GPT-4, or a local vLLM server)"
DESCRIPTION = """Reads task instructions (JSONL with an 'instruction' field, e.g. downstream task
records), asks the endpoint for K paraphrases each that keep every {placeholder} and
<special> token, validates them (placeholders, emptiness, near-duplicates), asks again for
missing ones, and writes {"original", "paraphrases"} lines for the data pipeline.
Responses are cached on disk, so reruns are free. The API key is read from the environment
variable named by generate.diversify.api_key_env (default OPENAI_API_KEY) only."""


def add_arguments(p):
    p.add_argument("instructions", help="JSONL with an 'instruction' field per line")
    p.add_argument("--out", required=True, help="output paraphrases JSONL")
    p.add_argument("--config", default=None, help="YAML config (generate.diversify section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:8000/v1 (default: OpenAI)")
    p.add_argument("--model", default=None)
    p.add_argument("-k", type=int, default=None, help="paraphrases per instruction")
    p.add_argument("--cache-dir", default=None, help="default: <out>.cache")
    p.add_argument("--price-per-1k", type=float, nargs=2, default=(0.03, 0.06), metavar=("PROMPT", "COMPLETION"),
                   help="USD per 1k prompt / completion tokens for the cost estimate (default GPT-4: 0.03 0.06)")


def run(args) -> int:
    import json
    import logging
    from pathlib import Path

    from .. import atomic
    from ..config import load_config
    from ..errors import UserError
    from ..gen.diversify import Diversifier, estimated_cost, read_instructions

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.config:
        cfg = load_config(args.config, args.overrides).generate.diversify
    else:  # no experiment config needed: defaults + --set generate.diversify.x=...
        from ..config import GenerateConfig, loader
        cfg = loader.load(GenerateConfig, None, [o.removeprefix("generate.") for o in args.overrides]).diversify
    for name in ("base_url", "model", "k"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    try:
        cfg.validate()
    except ValueError as e:
        raise UserError(f"generate.diversify.{e}") from None
    out = Path(args.out)
    cache = args.cache_dir or cfg.cache_dir or f"{out}.cache"
    instructions = read_instructions(args.instructions)
    div = Diversifier(cfg, cache)
    rows = div.run(instructions)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    s = div.stats
    print(f"{len(rows)} instructions x {cfg.k} paraphrases -> {out}")
    print(f"requests {s.requests} (cached {s.cached}, retries {s.retries}); tokens {s.prompt_tokens} prompt + "
          f"{s.completion_tokens} completion; est. cost ${estimated_cost(s, *args.price_per_1k):.4f}; "
          f"rejected {dict(s.rejected) or 0}")
    return 0
