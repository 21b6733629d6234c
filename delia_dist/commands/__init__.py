"""CLI subcommands: one module each, discovered by delia_dist.cli."""
