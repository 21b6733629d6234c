"""Read one full fp32 parameter at a time from a DeepSpeed ZeRO-3 step directory.

Every rank's file holds a 1/world slice of every parameter, so a whole parameter needs all
files at once: they are memory-mapped (torch.load(mmap=True)), never read whole, and
re-opened after `remap_bytes` have been read so the mapped pages a long export touches are
released as it goes. Peak memory is then one parameter plus remap_bytes plus a constant,
whatever the model size (see export.export_peak_bytes).

Files are unpickled with weights_only=True; the optimizer file's two DeepSpeed classes are
the only globals allowed.
"""
from __future__ import annotations

import gc
import re
from pathlib import Path

import torch

_RANK = re.compile(r"zero_pp_rank_(\d+)_mp_rank_00_(model|optim)_states\.pt$")


def _safe_globals():
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    return [LossScaler, ZeroStageEnum]


def _rank_files(step_dir: Path, kind: str) -> list[Path]:
    found = {}
    for p in step_dir.iterdir():
        m = _RANK.search(p.name)
        if m and m.group(2) == kind:
            found[int(m.group(1))] = p
    if sorted(found) != list(range(len(found))) or not found:
        raise FileNotFoundError(f"{step_dir}: DeepSpeed {kind} files for ranks {sorted(found)} (need 0..N-1)")
    return [found[r] for r in range(len(found))]


def _load(path: Path):
    with torch.serialization.safe_globals(_safe_globals()):
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


class ZeroReader:
    """Parameter names (DeepSpeed's, wrapper prefix included), shapes and fp32 values: the
    master weights, or with state="exp_avg"/"exp_avg_sq" Adam's moments laid out the same way."""

    def __init__(self, step_dir: str | Path, remap_bytes: int = 1 << 30, state: str = "fp32"):
        self.step_dir, self.remap_bytes, self.state = Path(step_dir), remap_bytes, state
        self.model_files = _rank_files(self.step_dir, "model")
        self.optim_files = _rank_files(self.step_dir, "optim")
        if len(self.model_files) != len(self.optim_files):
            raise FileNotFoundError(f"{self.step_dir}: {len(self.model_files)} model files but "
                                    f"{len(self.optim_files)} optimizer files")
        self.world = len(self.model_files)
        first = _load(self.model_files[0])
        stage = int(_load(self.optim_files[0])["optimizer_state_dict"]["zero_stage"])
        if stage != 3:
            raise ValueError(f"{self.step_dir}: ZeRO stage {stage} checkpoint; the streaming export reads stage 3")
        self.trainable: dict[str, tuple[int, torch.Size]] = {}  # name -> (offset in the rank's flat data, shape)
        offset = 0
        for group in first["param_shapes"]:
            for name, shape in group.items():
                self.trainable[name] = (offset, torch.Size(shape))
                offset += -(-torch.Size(shape).numel() // self.world)
        self.frozen = {k: torch.Size(v) for k, v in (first.get("frozen_param_shapes") or {}).items()}
        self.aliases = dict(first.get("shared_params") or {})  # tied names -> the stored name
        self.buffers = {k: v.clone() for k, v in first["module"].items() if k in set(first["buffer_names"])}
        del first
        self._maps = None
        self._read = 0

    def names(self) -> list[str]:
        return [*self.trainable, *self.frozen, *self.buffers]

    def shape(self, name: str) -> torch.Size:
        if name in self.trainable:
            return self.trainable[name][1]
        if name in self.frozen:
            return self.frozen[name]
        return self.buffers[name].shape

    def dtype(self, name: str) -> torch.dtype:
        if name in self.buffers:
            return self.buffers[name].dtype
        return torch.float32

    def _open(self):
        if self._maps is None:
            flats, frozen = [], []
            for mf, of in zip(self.model_files, self.optim_files):
                osd = _load(of)["optimizer_state_dict"]
                flats.append(osd["fp32_flat_groups"] if self.state == "fp32" else
                             [osd["optimizer_state_dict"]["state"][i][self.state]
                              for i in range(len(osd["fp32_flat_groups"]))])
                frozen.append((_load(mf).get("frozen_param_fragments") or {}) if self.frozen else {})
            self._maps = (flats, frozen)
        return self._maps

    def close(self) -> None:
        self._maps = None
        gc.collect()

    def get(self, name: str) -> torch.Tensor:
        """The full parameter as a new fp32 tensor (no reference into the mapped files)."""
        if name in self.buffers:
            return self.buffers[name].clone()
        flats, frozen = self._open()
        shape = self.shape(name)
        numel = shape.numel()
        if name in self.frozen:
            if self.state != "fp32":
                raise KeyError(f"{name} is frozen: it has no {self.state}")
            parts = [frozen[r][name].reshape(-1) for r in range(self.world)]
        else:
            parts = [_slice_groups(flats[r], self.trainable[name][0], -(-numel // self.world))
                     for r in range(self.world)]
        out = torch.cat(parts)[:numel].to(torch.float32).reshape(shape)  # cat copies out of the maps
        del parts
        self._read += numel * 4
        if self._read >= self.remap_bytes:
            self.close()
            self._read = 0
        return out


def _slice_groups(groups: list[torch.Tensor], offset: int, length: int) -> torch.Tensor:
    """`length` elements from `offset` of the concatenation of a rank's flat groups."""
    pieces = []
    for g in groups:
        n = g.numel()
        if offset < n and length > 0:
            take = min(length, n - offset)
            pieces.append(g.reshape(-1)[offset:offset + take])
            length -= take
            offset = 0
        else:
            offset -= n
    if length:
        raise ValueError("parameter extends past the rank's flat optimizer groups: checkpoint is damaged")
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def adam_steps(step_dir: str | Path) -> list[int]:
    """Adam's step count of every sub-group on every rank (they must all agree)."""
    out = []
    for f in _rank_files(Path(step_dir), "optim"):
        for st in _load(f)["optimizer_state_dict"]["optimizer_state_dict"]["state"].values():
            out.append(int(st["step"]))
    return out
