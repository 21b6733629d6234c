"""Checkpoints: sharded atomic save/load, elastic resume, reading ZeRO shards, HF export."""
