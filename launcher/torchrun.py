"""torchrun for `delia train`, without torchrun's own error report after a worker failed.

Each rank already printed its one line (launcher.__main__.report_failure); torchrun's
ChildFailedError block (its own traceback plus a table per rank) would bury it, and for a
preempted rank (exit 75) it reads like a crash. With DELIA_DEBUG=1 it is shown as before.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from delia_dist.errors import debug_enabled
    from launcher.__main__ import EXIT_PREEMPTED, EXIT_STORAGE

    args = parse_args(argv)
    try:
        run(args)
    except ChildFailedError as e:
        if debug_enabled():
            raise
        codes = sorted({f.exitcode for f in e.failures.values()})
        if codes == [EXIT_PREEMPTED]:
            return 1  # a preemption, not a failure: `delia train` reads rank 0's result file
        print(f"[delia] {len(e.failures)} rank(s) exited with {codes} (their lines above say why; "
              f"DELIA_DEBUG=1 for torchrun's report)", file=sys.stderr, flush=True)
        return EXIT_STORAGE if EXIT_STORAGE in codes else 1  # `delia train` passes it on
    return 0


if __name__ == "__main__":
    sys.exit(main())
