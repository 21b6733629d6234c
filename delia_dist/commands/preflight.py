"""`delia preflight`: what would stop the job in its first minutes, before srun starts the ranks."""
NAME = "preflight"
HELP = "check attention, DeepSpeed ops, model + tokenizer, disk, timeouts and interfaces before a job"
DESCRIPTION = """Check on this node what would stop CONFIG's job in its first minutes:
  attention   the model.attn_implementation is importable (flash_attention_2 needs flash-attn)
  deepspeed   DeepSpeed imports and its optimizer needs no op that every rank would JIT-compile
  model       model.name_or_path has config.json and weights (or resolves as a hub id)
  tokenizer   loads, has a chat template, and ends assistant turns with a special token
  disk        free space under checkpoint.dir for a checkpoint plus the universal copy
  timeouts    the save (`delia plan`'s estimate at checkpoint.fs_bandwidth_gbps) fits the
              preemption warning (DELIA_PREEMPT_LEAD, 600 s), a step fits DELIA_DIST_TIMEOUT
  network     NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME name interfaces that exist here
One line per check; a failure names what to change. Exit 0 unless --strict (or
DELIA_PREFLIGHT=strict) and a check failed: then 1. The Slurm scripts run it before srun.
Example: delia preflight configs/llama3_70b.yaml --nodes 8 --gpus-per-node 8 --gpu h100-80gb"""


def add_arguments(p):
    from ..plan import GPUS
    p.add_argument("config", help="YAML config, e.g. configs/llama3_70b.yaml")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=1)
    p.add_argument("--gpu", choices=sorted(GPUS), default=None,
                   help="GPU type for the step-time checks (skipped without it, e.g. on CPU jobs)")
    p.add_argument("--preempt-lead", type=float, default=None,
                   help="seconds between the USR1 warning and the time limit (default $DELIA_PREEMPT_LEAD or 600)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a check fails (also DELIA_PREFLIGHT=strict)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def run(args) -> int:
    import os

    from .. import preflight
    from ..config import load_config
    from ..errors import UserError
    from ..plan import PlanError, plan

    cfg = load_config(args.config, args.overrides, check_paths=False)
    try:
        lead = args.preempt_lead if args.preempt_lead is not None else float(
            os.environ.get("DELIA_PREEMPT_LEAD", preflight.DEFAULT_PREEMPT_LEAD_S))
    except ValueError:
        raise UserError(f"DELIA_PREEMPT_LEAD={os.environ['DELIA_PREEMPT_LEAD']!r} is not a number of seconds") from None
    findings = [preflight.attention(cfg), preflight.deepspeed_ops(cfg), *preflight.model_and_tokenizer(cfg)]
    try:
        result = plan(cfg, nodes=args.nodes, gpus_per_node=args.gpus_per_node, gpu=args.gpu or "h100-80gb")
    except PlanError as e:
        findings.append(preflight.Finding("disk", False, f"cannot size the checkpoint: {e}"))
    else:
        findings += [preflight.disk(cfg, result),
                     *preflight.timeouts(result, os.environ, lead, step_known=args.gpu is not None)]
    findings += preflight.interfaces(os.environ)
    for f in findings:
        print(f.line())
    failed = [f for f in findings if not f.ok]
    strict = args.strict or os.environ.get("DELIA_PREFLIGHT", "").lower() == "strict"
    print(f"[preflight] {len(failed)} of {len(findings)} checks failed"
          + (" (strict: stopping)" if failed and strict
             else "" if not failed else " (DELIA_PREFLIGHT=strict stops here)"))
    return 1 if failed and strict else 0
