"""Linear + cross-entropy, chunked over rows, gradients computed in the forward.

Design and cost. For each chunk of C rows: logits = h_c @ W^T (2*C*D*V FLOPs, input dtype,
fp32 accumulate), one pass over the row computes log-sum-exp, the loss and the gradient of
the logits in place (Triton kernel on GPU, torch ops elsewhere), then
grad_h_c = g @ W and grad_W += g^T @ h_c (2*C*D*V each). Total 6*N*D*V FLOPs, the floor
for this loss: nothing is recomputed in backward, which only multiplies the stored
gradients by grad_output. Extra memory is one C x V logits/gradient buffer plus grad_W's
sum (V x D fp32, or none with grad_accum="input") and grad_h (N x D): O(C*V), never O(N*V).

Memory traffic besides the GEMMs. The buffer holds the logits in the inputs' dtype (the
GEMM rounds to it anyway) and the gradient replaces them in place in that dtype, which is
what the next two GEMMs read: per logit, one 16-bit write by the GEMM, two reads and one
write by the row kernel (fp32 arithmetic in registers), 8 bytes in bf16, as in Liger. An
fp32 buffer would cost 32 (convert in, read twice, write, convert out twice).

Only requested gradients are made: without grad (eval) 2*N*D*V; a frozen head (LoRA:
weight.requires_grad False) skips grad_W, 4*N*D*V and no V x D buffer.

reduction="none" with a gradient needs a per-row grad_output the forward cannot know.
grad_h could be stored unscaled and scaled per row later, but grad_W = sum_i go_i g_i^T h_i
needs every row's g again, and keeping g is N x V. So that path saves only its inputs and
recomputes the logits in backward: 2*N*D*V forward + 6*N*D*V backward = 8*N*D*V. The
trainer avoids it: it asks for reduction="sum" with return_token_losses=True, which gives
per-token losses (detached, for per-source and per-format-token metrics) at 6*N*D*V.
"""
from __future__ import annotations

from typing import Optional

import torch

LOSS_IMPLS = ("auto", "triton", "chunked", "naive")
GRAD_ACCUM = ("fp32", "input")
# Most rows per chunk: the logits buffer is chunk x V in the inputs' dtype.
DEFAULT_CHUNK = 4096


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
        return True
    except ImportError:
        return False


def chunk_rows(n: int, v: int, chunk_size: Optional[int], itemsize: int = 4) -> int:
    """Rows per chunk for N rows of a V vocabulary (also what `delia plan` counts with)."""
    if chunk_size:
        return max(1, chunk_size)
    # Aim for ~256 MiB of logits per chunk (in the inputs' dtype), at least 1 row.
    return max(1, min(DEFAULT_CHUNK, (256 << 20) // (itemsize * max(v, 1)), n))


def _row_loss_and_grad(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, *,
                       label_smoothing: float, z_loss: float, softcap: Optional[float],
                       grad_scale: Optional[torch.Tensor], want_grad: bool):
    """Loss per row and (if want_grad) d loss / d logits, in place into `logits` (in its
    dtype; overwritten either way). The arithmetic is fp32 whatever that dtype is.

    grad_scale: per-row multiplier for the gradient (1/n_valid for mean, 1 for sum).
    Loss and lse are 0 on ignored rows, as in the Triton kernel.
    """
    # Everything C x V below works in place on one fp32 buffer (plus one tanh buffer with
    # softcap): `logits` itself when fp32, else an fp32 copy written back at the end.
    out = logits
    z = logits if logits.dtype == torch.float32 else logits.float()
    if softcap is not None:
        t = z.div(softcap).tanh_()
        z = torch.mul(t, softcap, out=z)
    safe = labels.clamp(min=0)
    z_y = z.gather(1, safe[:, None]).squeeze(1)
    eps = label_smoothing
    z_mean = z.mean(dim=-1) if eps else None
    m = z.amax(dim=-1)
    p = z.sub_(m[:, None]).exp_()
    total = p.sum(dim=-1)
    lse = m + total.log()
    loss = (1.0 - eps) * (lse - z_y)
    if eps:
        loss = loss + eps * (lse - z_mean)
    if z_loss:
        loss = loss + z_loss * lse * lse
    zero = torch.zeros_like(loss)
    loss = torch.where(valid, loss, zero)
    if not want_grad:
        return loss, torch.where(valid, lse, zero), None
    # softmax * (1 + 2 z_loss lse) [the z-loss term], every row: ignored ones are zeroed below.
    p.mul_(((1.0 + 2.0 * z_loss * lse) / total)[:, None])
    if eps:
        p.sub_(eps / z.shape[-1])
    p.scatter_add_(1, safe[:, None], torch.full_like(z_y[:, None], -(1.0 - eps)))
    if softcap is not None:
        p.mul_(t.mul_(t).neg_().add_(1.0))
    p.mul_((grad_scale * valid)[:, None])
    if p is not out:
        out.copy_(p)
    return loss, torch.where(valid, lse, zero), out


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  buf: torch.Tensor) -> torch.Tensor:
    """Logits of the rows h in the inputs' dtype, as the model's own head would make them,
    written straight into the one reused chunk buffer (a fresh tensor per chunk would hold
    two chunks at once). 16-bit logits lose nothing an fp32 buffer would keep: the GEMM
    rounds its output to the input dtype either way, and the row pass upcasts to fp32."""
    out = buf[: h.shape[0]]
    if bias is None:
        torch.mm(h, weight.T, out=out)
    else:
        torch.addmm(bias.to(h.dtype), h, weight.T, out=out)
    return out


# Vocabulary rows per 16-bit grad_W product when accumulating into fp32: bounds that
# product's temporary to VOCAB_SLICE x D (D=8192: 256 MiB) instead of V x D.
VOCAB_SLICE = 16384


def _accumulate_grad_w(grad_w: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> None:
    """grad_w += g^T @ h, g the chunk's d loss / d logits (in h's dtype).

    Same dtype as h (fp32, or 16-bit with grad_accum="input"): addmm_ in place, the GEMM
    accumulates in fp32 and rounds once per chunk. 16-bit h into an fp32 grad_w: the
    product is made in h's dtype, as the logits were, one vocabulary slice at a time, so
    the temporary is VOCAB_SLICE x D, never V x D.
    """
    if grad_w.dtype == h.dtype:
        grad_w.addmm_(g.T, h)
        return
    gt = g.T
    for s in range(0, gt.shape[0], VOCAB_SLICE):
        e = min(gt.shape[0], s + VOCAB_SLICE)
        grad_w[s:e] += gt[s:e] @ h


def _rows(use_triton: bool, logits, labels, valid, **kw):
    """The row loss/gradient from the Triton kernel or from torch ops (same contract)."""
    if use_triton:
        from .triton_ce import row_loss_and_grad_triton
        return row_loss_and_grad_triton(logits, labels, valid, **kw)
    return _row_loss_and_grad(logits, labels, valid, **kw)


def _chunked_pass(hidden, weight, bias, labels, valid, grad_scale, opts, use_triton, chunk_size,
                  losses=None, grad_h=None, grad_w=None, grad_b=None) -> None:
    """One sweep over row chunks: logits, row losses into `losses`, and d loss / d logits
    (times grad_scale per row) folded into whichever of grad_h / grad_w / grad_b is given.
    The forward runs it with the reduction's scale, the recomputing backward with grad_out."""
    n, v = hidden.shape[0], weight.shape[0]
    want_grad = grad_h is not None or grad_w is not None or grad_b is not None
    step = chunk_rows(n, v, chunk_size, hidden.element_size())
    buf = torch.empty(min(step, n), v, dtype=hidden.dtype, device=hidden.device)
    for s in range(0, n, step):
        e = min(n, s + step)
        h = hidden[s:e]
        logits = _chunk_logits(h, weight, bias, buf)
        loss, _, g = _rows(use_triton, logits, labels[s:e], valid[s:e], grad_scale=grad_scale[s:e],
                           want_grad=want_grad, **opts)
        if losses is not None:
            losses[s:e] = loss
        if grad_h is not None:
            torch.mm(g, weight, out=grad_h[s:e])  # g, W and grad_h share the inputs' dtype
        if grad_w is not None:
            _accumulate_grad_w(grad_w, g, h)
        if grad_b is not None:
            grad_b += g.sum(0, dtype=torch.float32)


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, reduction, label_smoothing, z_loss,
                softcap, chunk_size, use_triton, grad_enabled, accum_dtype):
        n, d = hidden.shape
        v = weight.shape[0]
        # Only the gradients autograd asks for are made: a frozen head (LoRA) skips grad_W,
        # its V x D fp32 buffer and a third of the FLOPs. needs_input_grad only looks at
        # requires_grad, so under torch.no_grad (eval, with trainable parameters) it still
        # says yes: grad_enabled, read before apply, turns all of it off.
        need_h, need_w, need_b = (grad_enabled and x for x in ctx.needs_input_grad[:3])
        need_b = need_b and bias is not None
        needs_grad = need_h or need_w or need_b
        valid_all = labels != ignore_index
        n_valid = valid_all.sum()
        precompute = needs_grad and reduction != "none"
        dev = hidden.device
        losses = torch.empty(n, dtype=torch.float32, device=dev)
        grad_h = torch.empty_like(hidden) if precompute and need_h else None
        grad_w = torch.zeros(v, d, dtype=accum_dtype, device=dev) if precompute and need_w else None
        grad_b = torch.zeros(v, dtype=torch.float32, device=dev) if precompute and need_b else None
        scale = (1.0 / n_valid.clamp(min=1).float()) if reduction == "mean" else torch.ones((), device=dev)
        opts = dict(label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
        _chunked_pass(hidden, weight, bias, labels, valid_all, scale.expand(n), opts, use_triton, chunk_size,
                      losses=losses, grad_h=grad_h, grad_w=grad_w, grad_b=grad_b)
        ctx.reduction, ctx.needs = reduction, (need_h, need_w, need_b)
        ctx.opts = (label_smoothing, z_loss, softcap, chunk_size, ignore_index, use_triton, accum_dtype)
        if precompute:
            ctx.save_for_backward(grad_h, grad_w, grad_b)
        elif needs_grad:
            ctx.save_for_backward(hidden, weight, bias, labels)
        ctx.precompute = precompute
        ctx.weight_dtype = weight.dtype
        tokens = losses.detach().clone() if reduction == "none" else losses
        ctx.mark_non_differentiable(tokens)
        if reduction == "none":
            return losses, tokens
        total = losses.sum()
        if reduction == "mean":
            total = total / n_valid.clamp(min=1)
        return total, tokens

    @staticmethod
    def backward(ctx, grad_out, _grad_tokens):
        nones = (None,) * 10
        if ctx.precompute:
            # Scaled in place: the stored gradients are ours alone, and a V x D fp32 copy of
            # grad_W would be the largest tensor of the step. A second backward through the
            # same graph (retain_graph) then fails autograd's saved-tensor version check
            # instead of returning a twice-scaled gradient.
            grad_h, grad_w, grad_b = ctx.saved_tensors
            go = grad_out.float()
            gh = grad_h.mul_(go) if grad_h is not None else None
            gw = grad_w.mul_(go.to(grad_w.dtype)).to(ctx.weight_dtype) if grad_w is not None else None
            gb = grad_b.mul_(go).to(ctx.weight_dtype) if grad_b is not None else None
            return (gh, gw, gb) + nones
        hidden, weight, bias, labels = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs
        label_smoothing, z_loss, softcap, chunk_size, ignore_index, use_triton, accum_dtype = ctx.opts
        v = weight.shape[0]
        dev = hidden.device
        gh = torch.empty_like(hidden) if need_h else None
        gw = torch.zeros(weight.shape, dtype=accum_dtype, device=dev) if need_w else None
        gb = torch.zeros(v, dtype=torch.float32, device=dev) if need_b else None
        opts = dict(label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
        _chunked_pass(hidden, weight, bias, labels, labels != ignore_index, grad_out.float(), opts, use_triton,
                      chunk_size, grad_h=gh, grad_w=gw, grad_b=gb)
        return (gh, gw.to(weight.dtype) if gw is not None else None,
                gb.to(weight.dtype) if gb is not None else None) + nones


def reference_linear_cross_entropy(hidden, weight, labels, bias=None, ignore_index=-100, reduction="mean",
                                   label_smoothing=0.0, z_loss=0.0, softcap=None):
    """Plain PyTorch: full logits in fp32 (float64 for float64 inputs). The ground truth for
    tests and the 'naive' impl."""
    acc = torch.promote_types(hidden.dtype, torch.float32)
    logits = (hidden @ weight.T).to(acc)
    if bias is not None:
        logits = logits + bias.to(acc)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    valid = labels != ignore_index
    lse = torch.logsumexp(logits, dim=-1)
    ce = torch.nn.functional.cross_entropy(logits, labels.clamp(min=0).long(), reduction="none",
                                           label_smoothing=label_smoothing)
    loss = ce + z_loss * lse * lse if z_loss else ce
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    return _reduce(loss, valid, reduction)


def _reduce(token_losses: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return token_losses
    total = token_losses.sum()
    return total / valid.sum().clamp(min=1) if reduction == "mean" else total


def _check_labels(labels: torch.Tensor, v: int, ignore_index: int) -> None:
    """The Triton kernel reads logits[label] unchecked, so a bad label must fail. The check is
    a device-side assert: queued like any kernel, it costs no host sync per micro-batch (a
    bool() here was one on every call). On a GPU a failure surfaces at the next sync as a
    device-side assert; the trainer's labels were range-checked on the host when decoded
    (data/decode.py), so there it cannot fire. On the CPU it raises at once and is turned
    into the one-line error naming the first bad label."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= v))
    try:
        torch._assert_async(~bad.any(), f"a label is out of range for vocabulary size {v}")
    except RuntimeError:
        if labels.is_cuda:
            raise
        first = labels[bad][0].item()  # the error path only
        raise ValueError(f"label {first} out of range for vocabulary size {v} "
                         f"(ignore_index={ignore_index})") from None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         bias: Optional[torch.Tensor] = None, ignore_index: int = -100,
                         reduction: str = "mean", label_smoothing: float = 0.0, z_loss: float = 0.0,
                         softcap: Optional[float] = None, impl: str = "auto",
                         chunk_size: Optional[int] = None, return_token_losses: bool = False,
                         grad_accum: str = "fp32"):
    """Cross-entropy of softmax(hidden @ weight.T + bias) against labels.

    hidden [N, D], weight [V, D], labels [N] (ignore_index skipped). reduction mean (over
    non-ignored tokens) | sum | none (per-token [N], 0 at ignored). With
    return_token_losses=True returns (loss, per_token_losses_detached).
    impl: auto (Triton on CUDA, else chunked) | triton | chunked | naive (full logits).
    grad_accum: dtype grad_W is summed in over row chunks. "fp32" (default): one V x D fp32
    buffer, cast to the weight's dtype at the end. "input": the weight's own dtype, summed by
    in-place GEMMs that accumulate in fp32 and round once per chunk (N / chunk roundings,
    as Liger does; cut-cross-entropy rounds once per 128-row block): saves V x D x 4 bytes,
    which is most of this loss's extra memory at large V.
    """
    if impl not in LOSS_IMPLS:
        raise ValueError(f"impl must be one of {LOSS_IMPLS}, got {impl!r}")
    if grad_accum not in GRAD_ACCUM:
        raise ValueError(f"grad_accum must be one of {GRAD_ACCUM}, got {grad_accum!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, D] and weight [V, D], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden and weight must share a dtype (the head's matmul runs in it), got "
                         f"{hidden.dtype} and {weight.dtype}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got {labels.dtype}")
    if labels.device != hidden.device or weight.device != hidden.device:
        raise ValueError(f"hidden, weight and labels must be on one device, got {hidden.device}, "
                         f"{weight.device} and {labels.device}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels must be [N]={hidden.shape[0]}, got {tuple(labels.shape)}")
    if softcap is not None and softcap <= 0:
        raise ValueError("softcap must be positive")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    _check_labels(labels, weight.shape[0], ignore_index)
    if impl == "naive":
        # The full logits once: the per-token losses are reduced here, and the same tensor,
        # detached, is what return_token_losses hands back.
        tokens = reference_linear_cross_entropy(hidden, weight, labels, bias, ignore_index, "none",
                                                label_smoothing, z_loss, softcap)
        loss = _reduce(tokens, labels != ignore_index, reduction)
        return (loss, tokens.detach()) if return_token_losses else loss
    use_triton = impl == "triton" or (impl == "auto" and hidden.is_cuda and _triton_available())
    loss, tokens = _ChunkedLinearCE.apply(hidden, weight, bias, labels, ignore_index, reduction,
                                          float(label_smoothing), float(z_loss), softcap, chunk_size, use_triton,
                                          torch.is_grad_enabled(),
                                          weight.dtype if grad_accum == "input" else torch.float32)
    return (loss, tokens) if return_token_losses else loss
