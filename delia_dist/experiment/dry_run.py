"""`delia experiment --dry-run`: the matrix as it would run, trained on nothing. Each run's
resolved token shares, diverse samples per downstream sample and expected steps (from the
shard manifests), so a 70B matrix is checked before it is queued."""
from __future__ import annotations

from ..data.mix_plan import resolve_mix
from ..train.trainer import tokens_per_step
from .matrix import plan_runs


def dry_run_rows(config_path: str, overrides: list[str] = (), only: list[str] | None = None,
                 world_size: int | None = None) -> list[dict]:
    """One row per run of the matrix; world_size defaults to experiment.nproc."""
    rows = []
    for name, _run_dir, _over, cfg in plan_runs(config_path, overrides, only, check_paths=False):
        world = world_size or cfg.experiment.nproc
        mix = resolve_mix(cfg.data, tokens_per_step(cfg, world), cfg.train.max_steps)
        rows.append({"run": name, "world": world, "mix": mix,
                     "shares": ", ".join(f"{s.name}={'?' if s.token_share is None else f'{s.token_share:.3f}'}"
                                         for s in mix.sources)})
    return rows


def dry_run_table(rows: list[dict]) -> str:
    head = ["run", "mix by", "token shares", "diverse/downstream samples", "expected steps", "length from"]
    body = [[r["run"], r["mix"].unit, r["shares"],
             "?" if r["mix"].diverse_per_downstream is None else f"{r['mix'].diverse_per_downstream:.4g}",
             "?" if r["mix"].expected_steps is None else str(r["mix"].expected_steps), r["mix"].steps_from]
            for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
