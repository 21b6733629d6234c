"""Typed configuration: YAML files in configs/ loaded into these dataclasses.

`load_config(path, ["train.lr=1e-5"])` is the one entry point; every error names the
file, line and key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import loader
from .checkpoint import CheckpointConfig
from .data import DataConfig, SourceConfig
from .deepspeed import DeepSpeedConfig
from .errors import ConfigError, ConfigValueError
from .evaluation import AlignmentConfig, EvalConfig, EvalTaskConfig
from .experiment import ExperimentConfig, RunSpec
from .generate import DiversifyConfig, GenerateConfig, SampleConfig
from .model import LoraConfig, ModelConfig, NewTokenConfig
from .tracking import TrackingConfig
from .train import LossConfig, TrainConfig


@dataclass
class Config:
    name: str = "delia"
    # Everything a run writes (checkpoints, MLflow store, logs) goes under here.
    run_dir: str = "runs/delia"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir or Path(self.run_dir) / "checkpoints")


def load_config(path=None, overrides=(), *, check_paths: bool = False) -> Config:
    """Load and validate; check_paths also requires local files named in the config to exist."""
    return loader.load(Config, path, list(overrides), paths=check_paths)


def config_from_dict(data: dict) -> Config:
    return loader.from_dict(Config, data)


to_dict = loader.to_dict
dump_yaml = loader.dump_yaml

__all__ = [
    "AlignmentConfig", "CheckpointConfig", "Config", "ConfigError", "ConfigValueError",
    "DataConfig", "DeepSpeedConfig", "DiversifyConfig", "EvalConfig", "EvalTaskConfig",
    "ExperimentConfig", "GenerateConfig", "LoraConfig", "LossConfig", "ModelConfig",
    "NewTokenConfig", "RunSpec", "SampleConfig", "SourceConfig", "TrackingConfig",
    "TrainConfig", "config_from_dict", "dump_yaml", "load_config", "to_dict",
]
