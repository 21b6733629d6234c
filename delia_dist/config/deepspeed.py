"""DeepSpeed section, rendered into DeepSpeed's own JSON at launch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigValueError


@dataclass
class DeepSpeedConfig:
    stage: Literal[0, 1, 2, 3] = 3
    offload_optimizer: Literal["none", "cpu", "nvme"] = "none"
    offload_param: Literal["none", "cpu", "nvme"] = "none"
    nvme_path: str = "/local_nvme"
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 500_000_000
    stage3_prefetch_bucket_size: int = 500_000_000
    # 0 forces every parameter to be partitioned (tiny models would otherwise stay whole).
    stage3_param_persistence_threshold: int = 1_000_000
    stage3_max_live_parameters: int = 1_000_000_000
    stage3_max_reuse_distance: int = 1_000_000_000
    gather_16bit_weights_on_model_save: bool = False
    # torch's AdamW needs no compiled op (CPU CI, and GPU nodes without nvcc: DeepSpeed's
    # FusedAdam JIT-compiles on every rank at initialize) and resumes bit-exactly.
    torch_adam: bool = False
    # With torch_adam: torch's fused AdamW kernel (one launch for all tensors on CUDA) instead
    # of its foreach path.
    adam_fused: bool = False
    # Raw keys merged last into the rendered JSON, for settings not modelled here.
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.offload_param != "none" and self.stage != 3:
            raise ConfigValueError("offload_param", "parameter offload needs stage 3")
        if self.adam_fused and not self.torch_adam:
            raise ConfigValueError("adam_fused", "is torch's fused AdamW: set torch_adam: true too")

    def render(self, *, micro_batch_size: int, grad_accum: int, world_size: int, precision: str,
               lr: float, betas: list[float], eps: float, weight_decay: float,
               grad_clip: float) -> dict[str, Any]:
        """The JSON DeepSpeed reads. Scheduling stays ours (so it is checkpointed with the rest)."""
        zero: dict[str, Any] = {
            "stage": self.stage,
            "overlap_comm": self.overlap_comm,
            "contiguous_gradients": self.contiguous_gradients,
            "reduce_bucket_size": self.reduce_bucket_size,
        }
        if self.stage == 3:
            zero.update({
                "stage3_prefetch_bucket_size": self.stage3_prefetch_bucket_size,
                "stage3_param_persistence_threshold": self.stage3_param_persistence_threshold,
                "stage3_max_live_parameters": self.stage3_max_live_parameters,
                "stage3_max_reuse_distance": self.stage3_max_reuse_distance,
                "stage3_gather_16bit_weights_on_model_save": self.gather_16bit_weights_on_model_save,
            })
        for kind, target in (("offload_optimizer", self.offload_optimizer), ("offload_param", self.offload_param)):
            if target != "none":
                zero[kind] = {"device": target, "pin_memory": True}
                if target == "nvme":
                    zero[kind]["nvme_path"] = self.nvme_path
        cfg: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": grad_accum,
            "train_batch_size": micro_batch_size * grad_accum * world_size,
            "gradient_clipping": grad_clip,
            "zero_optimization": zero,
            "optimizer": {"type": "AdamW", "params": {
                "lr": lr, "betas": list(betas), "eps": eps, "weight_decay": weight_decay,
                **({"torch_adam": True} if self.torch_adam else {}),
                **({"fused": True} if self.adam_fused else {})}},
            "bf16": {"enabled": precision == "bf16"},
            "fp16": {"enabled": precision == "fp16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        _deep_merge(cfg, self.extra)
        return cfg


def _deep_merge(base: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = v
