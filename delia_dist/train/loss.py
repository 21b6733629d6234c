"""Training loss from the last hidden states, never from materialised full logits.

`CausalLMWithLoss` wraps the HF model so the output head's weight is used inside *this*
module's forward: under ZeRO-3 it is registered as an external parameter of the wrapper,
so DeepSpeed gathers it for the fused loss and re-gathers it for backward like any other.
"""
from __future__ import annotations

import torch

from kernels import linear_cross_entropy

from ..model.build import causal_lm, output_head
from .profile import NULL

IMPLS = {"fused": "auto", "chunked": "chunked", "naive": "naive"}


class CausalLMWithLoss(torch.nn.Module):
    def __init__(self, model, loss_cfg, zero3: bool):
        super().__init__()
        self.model = model
        self.loss_cfg = loss_cfg
        self.profile = NULL  # the trainer sets a train.profile.StepProfile to time the loss
        if zero3:
            import deepspeed
            head = output_head(model)
            deepspeed.zero.register_external_parameter(self, head.weight)
            if head.bias is not None:
                deepspeed.zero.register_external_parameter(self, head.bias)

    def hidden_states(self, input_ids, position_ids):
        # attention_mask=None with position_ids lets transformers build the block-diagonal
        # causal mask of packed rows (positions restart at 0 for every sample).
        base = causal_lm(self.model).model
        out = base(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def forward(self, input_ids, position_ids, labels):
        """(summed loss to backpropagate, detached per-token losses [B, L], 0 where ignored).

        The sum keeps the fused path at 6*N*D*V FLOPs (gradients made in the forward); the
        per-token losses come free and feed the per-source and format-token metrics."""
        hidden = self.hidden_states(input_ids, position_ids)
        head = output_head(self.model)
        c = self.loss_cfg
        with self.profile.phase("loss"):
            total, tokens = linear_cross_entropy(
                hidden.reshape(-1, hidden.shape[-1]), head.weight, labels.reshape(-1), bias=head.bias,
                reduction="sum", label_smoothing=c.label_smoothing, z_loss=c.z_loss, softcap=c.softcap,
                impl=IMPLS[c.impl], chunk_size=c.chunk_size, return_token_losses=True,
                grad_accum=c.head_grad_dtype)
        return total, tokens.view(labels.shape)


def per_source(losses: torch.Tensor, labels: torch.Tensor, source_ids: torch.Tensor,
               n_sources: int) -> torch.Tensor:
    """[2 * n_sources] float64 on the tensors' device: loss sums then loss-token counts per
    source. No boolean indexing, so on a GPU it queues kernels without a host sync."""
    mask = labels != -100
    src = source_ids.long().clamp(min=0).reshape(-1)
    zeros = torch.zeros(n_sources, dtype=torch.float64, device=losses.device)
    sums = zeros.index_add(0, src, torch.where(mask, losses.detach(), 0).double().reshape(-1))
    counts = zeros.index_add(0, src, mask.double().reshape(-1))
    return torch.cat([sums, counts])
