"""Triton row kernel for linear + cross-entropy: loss, log-sum-exp and d loss / d logits.

One program per row of a C x V logits chunk (fp32, bf16 or fp16; arithmetic in fp32).
Pass 1 streams the row in blocks and keeps a running max and a rescaled sum of
exponentials (online log-sum-exp), so a row of any V is read once without holding it.
Pass 2 reads the row again and overwrites it with the gradient, so the chunk's logits
buffer doubles as its gradient buffer: no second C x V allocation. Ignored rows skip
both reads and only write zeros (prompt tokens are often most of a DELIA batch).

Runs compiled on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before
this module is imported (triton.jit reads it when the kernel is defined; slow; for tests).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# Largest block of the vocabulary one program holds in registers (fp32): 16k values over
# 16 warps is 32 registers a thread.
MAX_BLOCK = 16384


@triton.jit
def _capped(x, softcap, HAS_SOFTCAP: tl.constexpr):
    """softcap * tanh(x / softcap), and tanh itself (needed for the gradient)."""
    if HAS_SOFTCAP:
        # tanh(u) = 2 * sigmoid(2u) - 1: no libdevice, so it also runs interpreted.
        t = 2.0 * tl.sigmoid(2.0 * x / softcap) - 1.0
        return t * softcap, t
    else:
        return x, x


@triton.jit
def _ce_rows_kernel(logits_ptr, stride_row, labels_ptr, scale_ptr, stride_scale, loss_ptr, lse_ptr,
                    V, label_smoothing, z_loss, softcap,
                    HAS_SOFTCAP: tl.constexpr, WANT_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    label = tl.load(labels_ptr + row)
    valid = label >= 0
    # An ignored row reads nothing: its loop bound is 0.
    v_end = tl.where(valid, V, 0)
    cols = tl.arange(0, BLOCK)

    m = float("-inf")
    s = 0.0
    z_sum = 0.0
    for start in range(0, v_end, BLOCK):
        mask = start + cols < V
        x = tl.load(row_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
        z, _t = _capped(x, softcap, HAS_SOFTCAP)
        z = tl.where(mask, z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
        z_sum += tl.sum(tl.where(mask, z, 0.0), axis=0)

    safe_label = tl.where(valid, label, 0)
    z_y, _t_y = _capped(tl.load(row_ptr + safe_label).to(tl.float32), softcap, HAS_SOFTCAP)
    lse = tl.where(valid, m + tl.log(tl.where(valid, s, 1.0)), 0.0)
    loss = (1.0 - label_smoothing) * (lse - z_y) + label_smoothing * (lse - z_sum / V) + z_loss * lse * lse
    tl.store(loss_ptr + row, tl.where(valid, loss, 0.0))
    tl.store(lse_ptr + row, lse)

    if WANT_GRAD:
        scale = tl.where(valid, tl.load(scale_ptr + row * stride_scale), 0.0)
        p_scale = 1.0 + 2.0 * z_loss * lse  # d(z_loss * lse^2)/dz = 2 z_loss lse softmax
        for start in range(0, V, BLOCK):
            offs = start + cols
            mask = offs < V
            # Names distinct from pass 1's so no value is mistaken for a loop-carried one.
            if valid:
                xg = tl.load(row_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                zg, tg = _capped(xg, softcap, HAS_SOFTCAP)
                g = tl.exp(zg - lse) * p_scale - label_smoothing / V
                g = tl.where(offs == label, g - (1.0 - label_smoothing), g)
                if HAS_SOFTCAP:
                    g = g * (1.0 - tg * tg)
                g = g * scale
            else:
                g = tl.zeros([BLOCK], dtype=tl.float32)
            tl.store(row_ptr + offs, g.to(logits_ptr.dtype.element_ty), mask=mask)


# triton.jit picks compiled or interpreted when a function is defined: this kernel at this
# import, triton.language's own helpers (tl.max, tl.sigmoid) when triton was first imported.
# If TRITON_INTERPRET changed in between the two disagree and the kernel cannot run.
INTERPRETED = isinstance(_ce_rows_kernel, InterpretedFunction)
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MODE_MISMATCH = INTERPRETED != isinstance(tl.max, InterpretedFunction)


def row_loss_and_grad_triton(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, *,
                             label_smoothing: float, z_loss: float, softcap: Optional[float],
                             grad_scale: Optional[torch.Tensor], want_grad: bool,
                             block_size: Optional[int] = None):
    """Same contract as linear_ce._row_loss_and_grad, as one Triton program per row.

    logits: [C, V] fp32, bf16 or fp16 with unit column stride, read and computed in fp32;
    overwritten (in its own dtype) by d loss / d logits when want_grad (times
    grad_scale[row], zero on ignored rows). Returns (loss[C], lse[C], logits-or-None), fp32;
    loss and lse are 0 on ignored rows. block_size (a power of two) overrides the
    vocabulary block, for tests of the multi-block loop.
    """
    if logits.dim() != 2 or logits.dtype not in FLOAT_DTYPES or logits.stride(1) != 1:
        raise ValueError(f"logits must be a 2-D fp32/bf16/fp16 tensor with unit column stride, got "
                         f"{logits.dtype} {tuple(logits.shape)} strides {logits.stride()}")
    if _MODE_MISMATCH:
        raise RuntimeError("TRITON_INTERPRET was changed after triton was first imported (something imported "
                           "triton before it was set): set it before any import of triton, e.g. at process start")
    if not logits.is_cuda and not INTERPRETED:
        raise RuntimeError("the Triton loss needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "kernels.triton_ce is first imported (CPU interpreter)")
    c, v = logits.shape
    loss = torch.empty(c, dtype=torch.float32, device=logits.device)
    lse = torch.empty(c, dtype=torch.float32, device=logits.device)
    if c == 0:
        return loss, lse, (logits if want_grad else None)
    # Ignored rows carry label -1: the kernel reads validity from the sign.
    lab = torch.where(valid, labels, torch.full_like(labels, -1)).to(torch.int64).contiguous()
    if want_grad:
        if grad_scale is None:
            raise ValueError("want_grad needs grad_scale")
        scale = grad_scale.to(device=logits.device, dtype=torch.float32).expand(c)
    else:
        scale = loss  # never read
    block = block_size or min(MAX_BLOCK, triton.next_power_of_2(v))
    if block & (block - 1):
        raise ValueError(f"block_size must be a power of two, got {block}")
    _ce_rows_kernel[(c,)](
        logits, logits.stride(0), lab, scale, scale.stride(0), loss, lse,
        v, float(label_smoothing), float(z_loss), float(softcap or 1.0),
        HAS_SOFTCAP=softcap is not None, WANT_GRAD=want_grad, BLOCK=block,
        num_warps=16 if block >= 8192 else (8 if block >= 2048 else 4))
    return loss, lse, (logits if want_grad else None)
