"""Process launch: turns Slurm / torchrun / a plain process into one DistEnv and starts the trainer."""
