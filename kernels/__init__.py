"""Fused linear + cross-entropy: the loss from hidden states and the output head without
ever holding all N x V logits. Standalone (no delia_dist imports), so it can be reused."""
from .linear_ce import LOSS_IMPLS, linear_cross_entropy, reference_linear_cross_entropy

__all__ = ["LOSS_IMPLS", "linear_cross_entropy", "reference_linear_cross_entropy"]
