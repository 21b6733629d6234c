"""One rank of the multi-process checks in test_scale.py: `python ranks.py SCENARIO RANK WORLD PORT OUT`.

Scenarios run the real delia_dist code on a real process group (gloo on CPU):
- groups: the default group is "cuda:gloo", which like NCCL has no CPU backend, so a host
  collective on a CPU tensor over it fails; the host helpers must still work.
- rendezvous: rank DELIA_TEST_LATE_RANK starts DELIA_TEST_LATE seconds late and the
  collective timeout is short; with a long rendezvous timeout the ranks still meet and reduce.
- io_timeout: the collective timeout is 3 s and rank 1 reaches a barrier 6 s late, once
  inside a checkpoint entry point (distributed.under_io_timeout, bound 60 s) and once outside.
- step: one optimizer step of a tiny Llama under ZeRO-3 (fp32, SGD) over this rank's share
  of four fixed micro-batches; writes the full weights before and after, and the counts of
  collectives and host syncs issued by delia_dist code during the step.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from delia_dist import distributed  # noqa: E402
from launcher.env import DistEnv  # noqa: E402

VOCAB, SEQ = 64, 32
# Loss tokens per micro-batch: very different, so per-rank or per-micro-batch averaging
# weighs them differently from the global token mean.
LOSS_TOKENS = [2, 31, 7, 25]


def micro_batches() -> list[dict]:
    g = torch.Generator().manual_seed(1234)
    out = []
    for n in LOSS_TOKENS:
        ids = torch.randint(0, VOCAB, (1, SEQ), generator=g)
        labels = torch.full_like(ids, -100)
        labels[0, SEQ - 1 - n:SEQ - 1] = ids[0, SEQ - n:SEQ]
        out.append({"input_ids": ids, "position_ids": torch.arange(SEQ).unsqueeze(0), "labels": labels,
                    "segment_ids": torch.ones_like(ids), "source_ids": torch.zeros_like(ids)})
    return out


def _ours(depth: int) -> bool:
    """Whether the code `depth` frames up (skipping torch's own frames) is delia_dist's."""
    f = sys._getframe(depth)
    torch_dir = os.path.dirname(torch.__file__)
    while f is not None and f.f_code.co_filename.startswith(torch_dir):
        f = f.f_back
    return f is not None and "/delia_dist/" in f.f_code.co_filename


class SyncCounter:
    """Counts collectives and device-to-host reads issued by delia_dist code (not DeepSpeed's
    own): wraps the torch.distributed calls and watches aten ops through a dispatch mode."""
    COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_object", "broadcast_object_list",
                   "barrier", "reduce_scatter_tensor", "all_gather_into_tensor")
    SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "_to_copy", "index")

    def __init__(self):
        self.collectives, self.syncs = [], []
        for name in self.COLLECTIVES:
            real = getattr(dist, name)

            def wrapped(*a, _real=real, _name=name, **k):
                if _ours(2):
                    self.collectives.append(_name)
                return _real(*a, **k)
            setattr(dist, name, wrapped)

    def mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if name in counter.SYNC_OPS and _syncs(name, args, kwargs or {}) and _ours(1):
                    counter.syncs.append(name)
                return func(*args, **(kwargs or {}))
        return Mode()


def _syncs(name, args, kwargs) -> bool:
    """Ops that make the host wait for the device: reading a scalar, data-dependent shapes
    (boolean masks), copies to the CPU."""
    if name == "_to_copy":
        return kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cpu"
    if name == "index":
        return any(t is not None and t.dtype == torch.bool for t in args[1])
    return True


def scenario_groups(env: DistEnv, out: Path) -> None:
    import datetime
    dist.init_process_group("cuda:gloo", init_method=f"tcp://127.0.0.1:{env.master_port}", rank=env.rank,
                            world_size=env.world_size, timeout=datetime.timedelta(seconds=60))
    try:  # the group really rejects CPU tensors, as NCCL does
        dist.all_reduce(torch.ones(1))
        rejects = False
    except RuntimeError:
        rejects = True
    distributed.init(env)  # adopts the group above
    result = {"rejects_cpu": rejects,
              "any": distributed.any_rank(env.rank == 1), "all": distributed.all_ranks(env.rank == 1),
              "max": distributed.max_over_ranks(env.rank * 10.0),
              "sum": distributed.sum_host([1, env.rank]),
              "gather": distributed.all_gather_object({"r": env.rank}),
              "bcast": distributed.broadcast_object({"from": env.rank})}
    distributed.barrier()
    (out / f"rank{env.rank}.json").write_text(json.dumps(result))
    distributed.teardown()


def scenario_rendezvous(env: DistEnv, out: Path) -> None:
    import deepspeed  # noqa: F401  (slow under load: imported first so the skew is the sleep alone)
    if env.rank == int(os.environ["DELIA_TEST_LATE_RANK"]):
        time.sleep(float(os.environ["DELIA_TEST_LATE"]))
    distributed.init(env, timeout_s=float(os.environ["DELIA_TEST_COLLECTIVE_TIMEOUT"]))
    total = distributed.sum_device(torch.ones(2, dtype=torch.float64, device=distributed.device()))
    (out / f"rank{env.rank}.json").write_text(json.dumps({"sum": total.tolist(),
                                                          "any": distributed.any_rank(env.rank == 0)}))
    distributed.teardown()


def scenario_io_timeout(env: DistEnv, out: Path) -> None:
    distributed.init(env, timeout_s=3)

    def late_barrier() -> str:
        if env.rank == 1:
            time.sleep(6)
        try:
            distributed.barrier()
            return "ok"
        except Exception as e:  # noqa: BLE001 (the outcome is the result)
            return f"{type(e).__name__}: {str(e)[:300]}"

    distributed.set_io_timeout(60)
    inside = distributed.under_io_timeout(late_barrier)()
    outside = late_barrier()
    (out / f"rank{env.rank}.json").write_text(json.dumps({"inside": inside, "outside": outside}))


def scenario_step(env: DistEnv, out: Path) -> None:
    import deepspeed

    from delia_dist.config.train import LossConfig
    from delia_dist.model.tiny import build_model, llama_config
    from delia_dist.train.loss import CausalLMWithLoss
    from delia_dist.train.state import MetricsWindow
    from delia_dist.train.step import agree, train_step

    distributed.init(env)
    counter = SyncCounter()
    grad_accum = 4 // env.world_size
    ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": grad_accum,
                 "train_batch_size": 4, "zero_optimization": {"stage": 3}, "gradient_clipping": 0.0,
                 "steps_per_print": 10 ** 9, "zero_allow_untested_optimizer": True}
    model = build_model(llama_config(VOCAB), seed=0)
    wrapper = CausalLMWithLoss(model, LossConfig(impl="chunked", chunk_size=16), zero3=True)
    engine, *_ = deepspeed.initialize(model=wrapper, model_parameters=wrapper.parameters(), config=ds_config,
                                      optimizer=lambda params: torch.optim.SGD(params, lr=1.0))
    engine.train()

    def weights() -> dict:
        params = dict(engine.module.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {n: p.detach().clone() for n, p in params.items()}

    before = weights()
    batches = micro_batches()[env.rank * grad_accum:(env.rank + 1) * grad_accum]
    window = MetricsWindow(["all"], capacity=2)
    plan = agree(batches, stop_requested=False)
    n_agree = len(counter.collectives)
    with counter.mode():
        stats = train_step(engine, batches, plan, n_sources=1)
    n_step_collectives, step_syncs = len(counter.collectives) - n_agree, list(counter.syncs)
    window.add(1, 1.0, plan, stats)
    window.add(2, 1.0, plan, stats)  # a second "step" of the same numbers
    counter.collectives.clear()
    cpu_reads = []
    real_cpu = torch.Tensor.cpu

    def cpu(t, *a, **k):
        if _ours(2):
            cpu_reads.append("cpu")
        return real_cpu(t, *a, **k)
    torch.Tensor.cpu = cpu
    records = window.flush()
    torch.Tensor.cpu = real_cpu
    after = weights()
    if env.rank == 0:
        torch.save({"before": before, "after": after}, out / "weights.pt")
    (out / f"rank{env.rank}.json").write_text(json.dumps({
        "plan_loss_tokens": plan.loss_tokens, "agree_collectives": n_agree,
        "step_collectives": n_step_collectives, "step_syncs": step_syncs,
        "flush_collectives": len(counter.collectives), "flush_cpu_reads": len(cpu_reads), "records": records}))
    distributed.teardown()


def main() -> None:
    scenario, rank, world, port, out = sys.argv[1:6]
    env = DistEnv(rank=int(rank), local_rank=int(rank), world_size=int(world), local_world_size=int(world),
                  master_port=int(port))
    {"groups": scenario_groups, "rendezvous": scenario_rendezvous, "step": scenario_step,
     "io_timeout": scenario_io_timeout}[scenario](env, Path(out))
    sys.stdout.flush()
    os._exit(0)  # gloo's threads can crash the interpreter at exit (see launcher)


if __name__ == "__main__":
    main()
