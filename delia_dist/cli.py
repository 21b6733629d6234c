"""The `delia` command. Subcommands are modules in delia_dist.commands that define
NAME ("data shard"), HELP, add_arguments(parser) and run(args) -> int; they import
heavy libraries inside run() so `delia --help` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback

from . import commands
from .config.errors import ConfigError
from .errors import UserError, debug_enabled
from .storage import EXIT_STORAGE, StorageError


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{commands.__name__}.{info.name}")


EPILOG = """typical flow (`delia COMMAND --help` for each):
  delia model fetch smollm2-135m-instruct DIR     # a real instruct model, offline-capable (or a hub id)
  delia data synth runs/tiny                      # toy data, no downloads (or: data sample / diversify / shard)
  delia config show configs/tiny_cpu.yaml         # the validated config, with --set overrides applied
  delia plan configs/llama3_70b.yaml --nodes 8 --gpus-per-node 8   # memory per GPU, tokens/s
  delia train configs/tiny_cpu.yaml --nproc 2     # or: sbatch slurm/delia_70b.sh
  delia ckpt export RUN_DIR/checkpoints OUT       # an HF model dir (LoRA merged)
  delia eval OUT --config CONFIG                  # its metrics, logged to MLflow
  delia experiment configs/tiny_cpu.yaml          # the whole baseline-vs-DELIA matrix + report
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="delia",
        description="DELIA instruction tuning at scale: generate and shard data, mix it by "
                    "token budget, train under DeepSpeed ZeRO-3, track in MLflow, evaluate.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of errors that name their cause (also DELIA_DEBUG=1; "
                             "training ranks inherit it)")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="command", metavar="COMMAND")}
    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {(): parser}
    modules = list(_command_modules())
    members: dict[tuple[str, ...], list[str]] = {}
    for module in modules:
        words = tuple(module.NAME.split())
        members.setdefault(words[:-1], []).append(words[-1])
    for module in modules:
        words = tuple(module.NAME.split())
        for depth in range(1, len(words)):
            prefix = words[:depth]
            if prefix not in parsers:
                group_parser = groups[prefix[:-1]].add_parser(
                    prefix[-1], help=" | ".join(members.get(prefix, [])) or f"{' '.join(prefix)} commands")
                parsers[prefix] = group_parser
                groups[prefix] = group_parser.add_subparsers(dest=f"cmd_{depth}", metavar="COMMAND")
                group_parser.set_defaults(_group=group_parser)
        sub = groups[words[:-1]].add_parser(
            words[-1], help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        (getattr(args, "_group", None) or parser).print_help()
        return 2
    if args.debug:
        os.environ["DELIA_DEBUG"] = "1"  # for the training ranks `delia train` starts
    try:
        return int(run(args) or 0)
    except (ConfigError, UserError) as e:  # they name their cause: one line, no traceback
        if debug_enabled():
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STORAGE if isinstance(e, StorageError) else 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
