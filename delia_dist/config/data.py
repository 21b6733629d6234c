"""Data section: sources mixed by token share, sequence length, packing, shuffling."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from .errors import ConfigValueError


@dataclass
class SourceConfig:
    name: str
    # Shard spec: a glob, a brace pattern ("shard-{000000..000099}.tar"), a manifest.json
    # written by `delia data shard`, or any URL webdataset reads (pipe:, s3 via pipe:).
    shards: str = field(metadata={"path": "shards"})
    # Target share of training *tokens* (not samples) drawn from this source.
    weight: float
    kind: Literal["diverse", "downstream"] = "diverse"
    # What happens when the source runs dry: start another epoch (up to max_epochs) or end the run.
    on_exhausted: Literal["repeat", "stop"] = "repeat"
    max_epochs: Optional[int] = None
    # Paraphrased task instructions (from `delia data diversify`); one is drawn per sample.
    paraphrases: Optional[str] = field(default=None, metadata={"path": "exists"})
    # fixed: every record keeps its own instruction even when `paraphrases` is set: common
    # instruction tuning (one wording per task), the control that isolates the paraphrases.
    instructions: Literal["paraphrased", "fixed"] = "paraphrased"

    def validate(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigValueError("weight", f"must be within [0, 1], got {self.weight}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ConfigValueError("max_epochs", "must be >= 1 or null (unlimited)")


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    seq_len: int = 2048
    # Total training tokens; the trainer derives the step count from it when train.max_steps is unset.
    token_budget: Optional[int] = None
    # The paper's mixing unit: diverse samples drawn per downstream sample (100 = 100 diverse
    # per downstream). Set, the mixer draws by sample counts and `weight` only splits samples
    # among the sources of one kind; null draws by token share (`weight`). The resolved token
    # shares are printed at start and logged (params mix.*).
    diverse_ratio: Optional[float] = None
    # Every downstream record exactly once (the authors' one epoch): downstream sources read
    # one epoch whatever their max_epochs/on_exhausted say, the run ends when every rank has
    # used up its downstream share, and its length
    # (for the lr schedule) is derived from the shard manifests unless train.max_steps is set.
    downstream_once: bool = False
    shuffle_shards: bool = True
    shuffle_buffer: int = 10_000
    pack: Literal["best_fit", "none"] = "best_fit"
    pack_buffer: int = 64
    # Allow a sample to continue in the next sequence; off keeps samples whole (DELIA default).
    split_samples: bool = False
    overlong: Literal["truncate", "skip"] = "truncate"
    # Reader slots per rank (like DataLoader workers, read in turn in-process): shards are
    # split across ranks x workers, and the stream state keeps each slot's position.
    num_workers: int = 0
    seed: int = 1234
    # A malformed record (bad JSON, missing member, ids/mask mismatch, id out of range) is a
    # counted, logged skip, or an error naming the shard and member.
    bad_records: Literal["skip", "error"] = "skip"
    # A corrupt or unreadable shard (truncated tar, bad gzip, failing pipe) stops the run
    # naming the file, or its remainder is dropped and counted.
    bad_shards: Literal["error", "skip"] = "error"

    REMOVED: ClassVar[dict[str, str]] = {
        k: "nothing read it; the mixer draws by token deficit, which keeps each source's token share within "
           "about one sample of its weight at every step" for k in ("mix_tolerance", "mix_window")}

    def validate(self) -> None:
        if not self.sources:
            raise ConfigValueError("sources", "at least one data source is required")
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigValueError("sources", f"duplicate source names: {sorted(dup)}")
        total = sum(s.weight for s in self.sources)
        if abs(total - 1.0) > 1e-6:
            shares = ", ".join(f"{s.name}={s.weight:g}" for s in self.sources)
            raise ConfigValueError("sources", f"weights must sum to 1, got {total:g} ({shares})")
        if self.seq_len < 8:
            raise ConfigValueError("seq_len", f"must be >= 8, got {self.seq_len}")
        if self.token_budget is not None and self.token_budget <= 0:
            raise ConfigValueError("token_budget", "must be positive")
        if self.num_workers < 0:
            raise ConfigValueError("num_workers", "must be >= 0")
        if self.pack_buffer < 1:
            raise ConfigValueError("pack_buffer", "must be >= 1")
        kinds = {s.kind for s in self.sources}
        if self.diverse_ratio is not None:
            if self.diverse_ratio < 0:
                raise ConfigValueError("diverse_ratio", f"must be >= 0 (diverse samples per downstream sample), "
                                                        f"got {self.diverse_ratio}")
            if "downstream" not in kinds or (self.diverse_ratio > 0 and "diverse" not in kinds):
                raise ConfigValueError("diverse_ratio", "needs a kind: downstream source and (ratio > 0) a kind: "
                                                        "diverse source")
        if self.downstream_once and "downstream" not in kinds:
            raise ConfigValueError("downstream_once", "needs a kind: downstream source")
