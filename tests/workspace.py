"""The tiny synthetic workspace the 2-rank training tests share (tokenizer, shards, eval data)."""
from __future__ import annotations


def tiny_workspace(tmp_path_factory, name: str):
    from delia_dist.data.synth import prepare_workspace
    root = tmp_path_factory.mktemp(name)
    prepare_workspace(root / "runs/tiny", n_train=80, n_eval=8, n_diverse=600)
    return root
