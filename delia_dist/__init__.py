"""delia-dist: DELIA instruction tuning at scale (DeepSpeed ZeRO-3, Slurm, MLflow)."""
__version__ = "0.1.0"
