"""linear_cross_entropy (chunked, Triton, naive) against a float64 reference: loss and
gradients for hidden, weight and bias over shapes that do not divide the chunk or the
vocabulary block, every reduction, dtype and loss option."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels import linear_cross_entropy, reference_linear_cross_entropy
from kernels.memtrack import TensorMemoryTracker

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
D = 16
CHUNK = 16  # N=37 -> chunks of 16, 16, 5
# (loss rtol, grad tolerance as a fraction of the largest reference gradient)
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (3e-3, 3e-3)}
OPTIONS = {
    "plain": {},
    "smooth": {"label_smoothing": 0.1},
    "zloss_softcap": {"z_loss": 1e-3, "softcap": 4.0},
    "all": {"label_smoothing": 0.2, "z_loss": 1e-2, "softcap": 2.5},
}


@pytest.fixture
def small_triton_block(monkeypatch):
    """Vocabulary blocks of 64 so V=101 and V=250 run the kernel's loop over 2 and 4 blocks,
    the last one partial."""
    import kernels.triton_ce as tce
    monkeypatch.setattr(tce, "MAX_BLOCK", 64)


def make_inputs(n, v, dtype, bias, seed=0, labels=None, ignore_frac=0.3):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, D, generator=g)
    w = torch.randn(v, D, generator=g) / D ** 0.5 * 3  # logits of a few units: softmax not flat
    b = torch.randn(v, generator=g) if bias else None
    if labels is None:
        labels = torch.randint(0, v, (n,), generator=g)
        labels[torch.rand(n, generator=g) < ignore_frac] = -100
    return h.to(dtype), w.to(dtype), (b.to(dtype) if bias else None), labels


def grads(fn, h, w, b, labels, reduction, device, weights, **opts):
    """Loss and (grad h, grad w, grad b) of fn on copies of the inputs on `device`."""
    h = h.detach().to(device).requires_grad_()
    w = w.detach().to(device).requires_grad_()
    b = b.detach().to(device).requires_grad_() if b is not None else None
    loss = fn(h, w, labels.to(device), bias=b, reduction=reduction, **opts)
    (loss * weights.to(device, loss.dtype) if reduction == "none" else loss).sum().backward()
    return loss.detach().double().cpu(), [t.grad.double().cpu() if t is not None else None for t in (h, w, b)]


def check(impl, n, v, dtype, reduction, bias, opts, labels=None, seed=0):
    h, w, b, labels = make_inputs(n, v, dtype, bias, seed, labels)
    weights = torch.rand(n, generator=torch.Generator().manual_seed(seed + 1))  # grad_output for "none"
    ref_loss, ref_grads = grads(reference_linear_cross_entropy, h.double(), w.double(),
                                b.double() if bias else None, labels, reduction, "cpu", weights.double(), **opts)
    loss, got = grads(lambda *a, **k: linear_cross_entropy(*a, impl=impl, chunk_size=CHUNK, **k),
                      h, w, b, labels, reduction, DEVICE, weights, **opts)
    rtol, gtol = TOL[dtype]
    assert torch.isfinite(loss).all()
    assert torch.allclose(loss, ref_loss, rtol=rtol, atol=rtol), (loss, ref_loss)
    for name, g, r in zip("hwb", got, ref_grads):
        if r is None:
            assert g is None
            continue
        assert torch.isfinite(g).all(), name
        err = (g - r).abs().max().item()
        assert err <= gtol * max(r.abs().max().item(), 1e-6), f"grad {name}: max error {err:.3g}"


GRID = list(itertools.product([1, 7, 37], [101, 250], ["mean", "sum", "none"], sorted(OPTIONS)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("n,v,reduction,opt", GRID)
def test_chunked_matches_float64_reference(n, v, reduction, opt, dtype):
    check("chunked", n, v, dtype, reduction, bias=(n + v) % 2 == 0, opts=OPTIONS[opt])


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opt", sorted(OPTIONS))
def test_triton_matches_float64_reference(opt, reduction, bias, small_triton_block):
    check("triton", 7, 101 if bias else 250, torch.float32, reduction, bias, OPTIONS[opt])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_triton_low_precision_and_several_chunks(dtype, small_triton_block):
    check("triton", 37, 101, dtype, "mean", True, OPTIONS["all"])


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_naive_matches_float64_reference(dtype, reduction):
    check("naive", 37, 250, dtype, reduction, True, OPTIONS["all"])


@pytest.mark.parametrize("impl", ["chunked", "triton", "naive"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_labels_ignored_gives_zero_loss_and_grads(impl, reduction):
    h, w, b, labels = make_inputs(7, 101, torch.float32, True, labels=torch.full((7,), -100))
    loss, got = grads(lambda *a, **k: linear_cross_entropy(*a, impl=impl, chunk_size=CHUNK, **k),
                      h, w, b, labels, reduction, DEVICE, torch.ones(7), **OPTIONS["all"])
    assert not loss.isnan().any() and (loss == 0).all()
    for g in got:
        assert not g.isnan().any() and (g == 0).all()


@pytest.mark.parametrize("impl", ["chunked", "triton"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_one_valid_label(impl, reduction, small_triton_block):
    labels = torch.full((7,), -100)
    labels[4] = 99
    check(impl, 7, 101, torch.float32, reduction, True, OPTIONS["all"], labels=labels)


@pytest.mark.parametrize("impl", ["chunked", "triton", "naive"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_return_token_losses(impl, reduction, small_triton_block):
    """The trainer's call: a reduced loss for backward plus detached per-token losses that
    equal the reference per-token losses (0 at ignored tokens) and sum to the loss."""
    h, w, b, labels = make_inputs(37, 101, torch.float32, True)
    h, w, b = (t.to(DEVICE).requires_grad_() for t in (h, w, b))
    opts = OPTIONS["all"]
    loss, tokens = linear_cross_entropy(h, w, labels.to(DEVICE), bias=b, reduction=reduction, impl=impl,
                                        chunk_size=CHUNK, return_token_losses=True, **opts)
    ref = reference_linear_cross_entropy(h.detach().double(), w.detach().double(), labels.to(DEVICE),
                                         b.detach().double(), reduction="none", **opts)
    assert tokens.shape == (37,) and not tokens.requires_grad
    assert torch.allclose(tokens.double(), ref, rtol=1e-5, atol=1e-5)
    assert (tokens[labels == -100] == 0).all()
    total = tokens.double().sum() / ((labels != -100).sum() if reduction == "mean" else 1)
    assert torch.allclose(loss.detach().double(), total, rtol=1e-5)
    loss.backward()
    assert torch.isfinite(w.grad).all()


def test_bad_inputs_raise():
    h, w, b, labels = make_inputs(7, 101, torch.float32, False)
    for bad, match in [(dict(impl="fast"), "impl"), (dict(reduction="avg"), "reduction"),
                       (dict(softcap=0.0), "softcap"), (dict(label_smoothing=1.5), "label_smoothing")]:
        with pytest.raises(ValueError, match=match):
            linear_cross_entropy(h, w, labels, **bad)
    with pytest.raises(ValueError, match="label 101 out of range"):
        linear_cross_entropy(h, w, torch.tensor([0, 1, 101, -100, 3, 4, 5]))
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(h, w[:, :8], labels)



class HostReads(TorchDispatchMode):
    """Counts the ops that copy a value back to the host: on a GPU each one waits for every
    kernel queued before it (item/bool/int, nonzero, boolean-mask indexing)."""
    SYNCING = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
               torch.ops.aten.masked_select.default}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bool_index = func is torch.ops.aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1])
        if func in self.SYNCING or bool_index:
            self.seen.append(str(func))
        return func(*args, **kwargs)


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_the_loss_reads_nothing_back_to_the_host(impl):
    """The trainer calls the loss once per micro-batch; a host read there (the label range
    check was a bool() on a device tensor) stalls the GPU queue every time. Forward and
    backward, with ignored labels, must queue kernels only; a bad label still fails loudly
    (test_bad_inputs_raise)."""
    h, w, b, labels = (t.to(DEVICE) for t in make_inputs(37, 101, torch.float32, True))
    h.requires_grad_(True)
    w.requires_grad_(True)
    if DEVICE == "cuda":  # bench/gpu_check.sh runs this file on the GPU: CUDA's own detector too
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        with HostReads() as mode:
            total, tokens = linear_cross_entropy(h, w, labels, bias=b, reduction="sum", impl=impl,
                                                 chunk_size=CHUNK, return_token_losses=True)
            total.backward()
    finally:
        if DEVICE == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert mode.seen == []
    assert torch.isfinite(total.detach()) and w.grad is not None

@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_chunked_never_materializes_n_by_v(reduction):
    """Every tensor made in forward and backward is smaller than N x V, and the most alive
    at once is a few chunk x V buffers plus grad_W/grad_h: the chunked loss holds one chunk
    of logits at a time. The naive loss, tracked the same way, does make an N x V tensor
    (so the tracker sees what it must)."""
    n, v, chunk = 1024, 512, 32
    h, w, b, labels = make_inputs(n, v, torch.float32, True)
    peaks = {}
    for impl in ("chunked", "naive"):
        hh, ww, bb = (t.clone().requires_grad_() for t in (h, w, b))
        with TensorMemoryTracker() as mem:
            loss = linear_cross_entropy(hh, ww, labels, bias=bb, reduction=reduction, impl=impl, chunk_size=chunk)
            loss.sum().backward()
        peaks[impl] = mem
    assert peaks["chunked"].max_numel < n * v, peaks["chunked"].max_shape
    bound = 4 * (4 * chunk * v + 3 * (n * D + v * D + v))
    assert bound < 4 * n * v / 2
    assert peaks["chunked"].peak_bytes < bound, peaks["chunked"].peak_bytes
    assert peaks["naive"].max_numel >= n * v
    assert peaks["naive"].peak_bytes > 4 * n * v


def test_ignored_rows_with_huge_logits_stay_finite():
    """An ignored row whose logits overflow exp() must not turn its zero gradient into NaN."""
    h, w, b, labels = make_inputs(4, 101, torch.float32, False, labels=torch.tensor([-100, 3, -100, 5]))
    h = h * 100
    for impl in ("chunked", "triton"):
        loss, got = grads(lambda *a, **k: linear_cross_entropy(*a, impl=impl, **k), h, w, b, labels, "sum",
                          DEVICE, torch.ones(4), softcap=None)
        assert torch.isfinite(loss).all() and all(torch.isfinite(g).all() for g in got if g is not None)
        assert (got[0][[0, 2]] == 0).all()


COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels.triton_ce import _ce_rows_kernel
for logits, softcap, want_grad in [("*fp32", True, True), ("*fp32", False, False), ("*bf16", True, True),
                                   ("*bf16", False, True), ("*fp16", False, True)]:
    sig = {"logits_ptr": logits, "stride_row": "i64", "labels_ptr": "*i64", "scale_ptr": "*fp32",
           "stride_scale": "i32", "loss_ptr": "*fp32", "lse_ptr": "*fp32", "V": "i32",
           "label_smoothing": "fp32", "z_loss": "fp32", "softcap": "fp32",
           "HAS_SOFTCAP": "constexpr", "WANT_GRAD": "constexpr", "BLOCK": "constexpr"}
    src = ASTSource(_ce_rows_kernel, sig, constexprs={"HAS_SOFTCAP": softcap, "WANT_GRAD": want_grad, "BLOCK": 16384})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 16})
    assert k.asm["cubin"], "no cubin"
print("ok")
"""


def test_triton_kernel_compiles_for_h100_class_gpu(tmp_path):
    """The interpreter runs Python semantics; the real compiler has stricter rules (loop-
    carried types, branch-local values). Compiling to an sm_90 cubin needs no GPU."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_DEFAULT_FP_FUSION="1", TRITON_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], cwd=Path(__file__).resolve().parents[2],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.parametrize("impl", ["chunked", "triton"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("frozen", ["weight", "hidden"])
def test_frozen_inputs_get_no_gradient_and_the_rest_is_exact(impl, reduction, frozen, small_triton_block):
    """LoRA freezes the head: the weight gets no gradient (and no V x D buffer is made),
    hidden's gradient still matches float64. And the other way round."""
    h, w, b, labels = make_inputs(37, 101, torch.float32, False)
    go = torch.rand(37, dtype=torch.float64) if reduction == "none" else torch.tensor(1.0, dtype=torch.float64)
    ref_h, ref_w = h.double().requires_grad_(), w.double().requires_grad_()
    ref = reference_linear_cross_entropy(ref_h, ref_w, labels, reduction=reduction, **OPTIONS["all"])
    (ref * go).sum().backward()
    hh, ww = h.to(DEVICE).requires_grad_(frozen != "hidden"), w.to(DEVICE).requires_grad_(frozen != "weight")
    with TensorMemoryTracker() as mem:
        # 8-row chunks: a chunk of logits (8 x V) is smaller than W (V x D=16).
        loss = linear_cross_entropy(hh, ww, labels.to(DEVICE), reduction=reduction, impl=impl, chunk_size=8,
                                    **OPTIONS["all"])
        (loss * go.to(DEVICE, torch.float32)).sum().backward()
    assert torch.allclose(loss.detach().double().cpu(), ref.detach(), rtol=1e-5, atol=1e-5)
    got, want, other = (hh, ref_h, ww) if frozen == "weight" else (ww, ref_w, hh)
    assert other.grad is None
    assert torch.allclose(got.grad.double().cpu(), want.grad, rtol=1e-5, atol=1e-5 * want.grad.abs().max().item())
    if frozen == "weight" and DEVICE == "cpu":
        assert mem.max_numel < w.numel(), mem.max_shape  # no grad_W-sized tensor was made


def test_eval_without_grad_makes_no_gradient_buffers():
    """Under no_grad (evaluation) only the loss is computed: nothing of size N x D or V x D."""
    n, v = 256, 300
    h, w, b, labels = make_inputs(n, v, torch.float32, True)
    h, w, b = (t.requires_grad_() for t in (h, w, b))
    with torch.no_grad(), TensorMemoryTracker() as mem:
        tokens = linear_cross_entropy(h, w, labels, bias=b, reduction="none", impl="chunked", chunk_size=CHUNK)
    ref = reference_linear_cross_entropy(h.detach().double(), w.detach().double(), labels, b.detach().double(),
                                         reduction="none")
    assert torch.allclose(tokens.double(), ref, rtol=1e-5, atol=1e-5)
    assert mem.max_numel <= CHUNK * v, mem.max_shape
    assert mem.peak_bytes < 4 * (2 * CHUNK * v + 4 * n)


def test_second_backward_through_the_same_graph_fails_loudly():
    """Backward scales the stored gradients in place (no V x D copy); a retain_graph second
    backward must then raise, never return a twice-scaled gradient."""
    h, w, b, labels = make_inputs(7, 101, torch.float32, False)
    h, w = h.requires_grad_(), w.requires_grad_()
    loss = linear_cross_entropy(h, w, labels, impl="chunked") * 3.0
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_mismatched_dtypes_and_float_labels_raise():
    h, w, b, labels = make_inputs(7, 101, torch.float32, False)
    with pytest.raises(ValueError, match="dtype"):
        linear_cross_entropy(h.bfloat16(), w, labels)
    with pytest.raises(ValueError, match="integer class ids"):
        linear_cross_entropy(h, w, labels.float())


@pytest.mark.parametrize("impl", ["chunked", "triton", "naive"])
def test_int32_labels_and_strided_hidden(impl, small_triton_block):
    """Labels as int32 (as some collators make them) and a transposed, non-contiguous hidden
    give the same loss and gradients as int64 labels and a contiguous hidden."""
    h, w, b, labels = make_inputs(37, 101, torch.float32, True)
    base_loss, base = grads(lambda *a, **k: linear_cross_entropy(*a, impl=impl, chunk_size=CHUNK, **k),
                            h, w, b, labels, "mean", DEVICE, None)
    h_t = h.T.contiguous().T  # same values, column-major
    loss, got = grads(lambda *a, **k: linear_cross_entropy(*a, impl=impl, chunk_size=CHUNK, **k),
                      h_t, w, b, labels.int(), "mean", DEVICE, None)
    assert torch.allclose(loss, base_loss, rtol=1e-6)
    for g, r in zip(got, base):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-7)


LATE_INTERPRET_SCRIPT = r"""
import os
import triton  # noqa: F401  (imported first, compiled mode, as transformers or inductor may do)
os.environ["TRITON_INTERPRET"] = "1"
import torch
from kernels import linear_cross_entropy
try:
    linear_cross_entropy(torch.randn(3, 4), torch.randn(10, 4), torch.tensor([1, 2, 3]), impl="triton")
except RuntimeError as e:
    print("ERROR:", e)
"""


def test_interpret_set_after_triton_import_is_a_clear_error():
    """Setting TRITON_INTERPRET after triton was imported leaves the kernel interpreted but
    triton's own helpers compiled; that must say so, not fail deep inside the interpreter."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", LATE_INTERPRET_SCRIPT], cwd=Path(__file__).resolve().parents[2],
                         env=env, capture_output=True, text=True, timeout=300)
    assert "ERROR: TRITON_INTERPRET was changed after triton was first imported" in out.stdout, out.stderr[-3000:]


class MatmulFlops(TorchDispatchMode):
    """2*m*k*n for every mm/addmm (plain, in-place and out= forms) run inside the block.
    torch's FlopCounterMode misses addmm_, which is how grad_W accumulates."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "mm":
            (m, k), n = args[0].shape, args[1].shape[1]
            self.flops += 2 * m * k * n
        elif name in ("addmm", "addmm_"):
            (m, k), n = args[1].shape, args[2].shape[1]
            self.flops += 2 * m * k * n
        elif name in ("bmm", "matmul", "baddbmm", "linear"):
            raise AssertionError(f"uncounted matmul {func}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case,ndv", [("mean", 6), ("sum", 6), ("frozen_head", 4), ("no_grad", 2),
                                      ("no_grad_none", 2), ("none", 8)])
def test_flops_are_what_the_design_says(case, ndv):
    """The FLOP claims of the module docstring and BENCHMARKS.md, counted: 6*N*D*V with
    gradients (nothing recomputed), 4 with a frozen head, 2 in evaluation (trainable
    parameters under no_grad), 8 for reduction='none' with a gradient (logits recomputed)."""
    n, v = 40, 101
    h, w, b, labels = make_inputs(n, v, torch.float32, False)
    h, w = h.requires_grad_(), w.requires_grad_(case != "frozen_head")
    reduction = "none" if case in ("none", "no_grad_none") else ("sum" if case == "sum" else "mean")
    with MatmulFlops() as count:
        with torch.set_grad_enabled(not case.startswith("no_grad")):
            loss = linear_cross_entropy(h, w, labels, reduction=reduction, impl="chunked", chunk_size=CHUNK)
        if loss.requires_grad:
            loss.sum().backward()
    assert count.flops == ndv * n * D * v


@pytest.mark.parametrize("impl", ["chunked", "triton"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_grad_accum_in_input_dtype_stays_within_the_dtype_tolerance(impl, reduction, dtype, small_triton_block):
    """grad_accum="input" sums grad_W over chunks in the weight's 16-bit dtype (one rounding
    per chunk, 3 chunks here): loss and gradients still within that dtype's tolerance of
    float64, and the weight's gradient comes out in its own dtype."""
    h, w, b, labels = make_inputs(37, 250, dtype, False)
    weights = torch.rand(37, generator=torch.Generator().manual_seed(1))
    ref_loss, ref = grads(reference_linear_cross_entropy, h.double(), w.double(), None, labels, reduction, "cpu",
                          weights.double(), **OPTIONS["all"])
    loss, got = grads(lambda *a, **k: linear_cross_entropy(*a, impl=impl, chunk_size=CHUNK, grad_accum="input", **k),
                      h, w, None, labels, reduction, DEVICE, weights, **OPTIONS["all"])
    rtol, gtol = TOL[dtype]
    assert torch.allclose(loss, ref_loss, rtol=rtol, atol=rtol)
    for name, g, r in zip("hw", got, ref):
        err = (g - r).abs().max().item()
        assert err <= gtol * r.abs().max().item(), f"grad {name}: max error {err:.3g}"


@pytest.mark.parametrize("grad_accum", ["fp32", "input"])
def test_16bit_grad_w_has_no_v_by_d_temporary(grad_accum, monkeypatch):
    """bf16 weights: the only V x D tensors made are grad_W's accumulator (fp32, or bf16 with
    grad_accum="input") and, for fp32, the bf16 gradient handed back; the per-chunk grad_W
    products are made one vocabulary slice at a time. "input" holds V x D x 4 bytes less."""
    import kernels.linear_ce as lce
    monkeypatch.setattr(lce, "VOCAB_SLICE", 128)
    n, v, chunk = 256, 1000, 32
    h, w, b, labels = make_inputs(n, v, torch.bfloat16, False)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    with TensorMemoryTracker(record_min_numel=v * D) as mem:  # new storage only, not views
        linear_cross_entropy(hh, ww, labels, impl="chunked", chunk_size=chunk, grad_accum=grad_accum).backward()
    made = mem.made
    big = [m for m in made if m[2] == (v, D)]
    want = {torch.float32, torch.bfloat16} if grad_accum == "fp32" else {torch.bfloat16}
    assert {m[1] for m in big} == want and len(big) == len(want), made
    vd = v * D
    accum = 4 * vd if grad_accum == "fp32" else 2 * vd
    # accumulator + returned bf16 grad (fp32 mode) + chunk buffers (bf16 logits/gradient,
    # the torch path's fp32 working copy, slack of one more bf16) + grad_h + one V-slice product.
    bound = accum + (2 * vd if grad_accum == "fp32" else 0) + chunk * v * (4 + 2 + 2) + 2 * n * D * 4 + 128 * D * 4
    assert mem.peak_bytes <= bound, (mem.peak_bytes, bound)
    assert ww.grad.dtype == torch.bfloat16


def test_bad_grad_accum_is_refused():
    h, w, b, labels = make_inputs(4, 50, torch.float32, False)
    with pytest.raises(ValueError, match="grad_accum"):
        linear_cross_entropy(h, w, labels, grad_accum="fp16")


def test_autocast_around_the_loss_changes_nothing():
    """Under torch.autocast (a user's mixed-precision loop) the chunk GEMMs still run in the
    inputs' dtype (they write into the chunk buffer with out=, which autocast leaves
    alone): same loss and gradients as without it, bit for bit."""
    h, w, b, labels = make_inputs(37, 250, torch.float32, True)
    plain = grads(lambda *a, **k: linear_cross_entropy(*a, chunk_size=CHUNK, **k), h, w, b, labels, "mean", "cpu",
                  torch.ones(37))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = grads(lambda *a, **k: linear_cross_entropy(*a, chunk_size=CHUNK, **k), h, w, b, labels, "mean",
                     "cpu", torch.ones(37))
    assert torch.equal(plain[0], auto[0])
    for g, a in zip(plain[1], auto[1]):
        assert torch.equal(g, a)


@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_fp32_bias_with_16bit_weights(impl, small_triton_block):
    """A head kept in bf16 with its bias in fp32 (some checkpoints) works: the bias joins
    the logits GEMM in the weights' dtype, and its gradient comes back in fp32."""
    h, w, _, labels = make_inputs(37, 101, torch.bfloat16, False)
    b = torch.randn(101, generator=torch.Generator().manual_seed(3))
    ref_loss, ref = grads(reference_linear_cross_entropy, h.double(), w.double(), b.double(), labels, "mean", "cpu",
                          torch.ones(37, dtype=torch.float64))
    loss, got = grads(lambda *a, **k: linear_cross_entropy(*a, impl=impl, chunk_size=CHUNK, **k), h, w, b, labels,
                      "mean", DEVICE, torch.ones(37))
    rtol, gtol = TOL[torch.bfloat16]
    assert torch.allclose(loss, ref_loss, rtol=rtol, atol=rtol)
    for g, r in zip(got, ref):
        assert (g - r).abs().max() <= gtol * r.abs().max()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_naive_token_losses_build_the_logits_once(reduction):
    """The naive path with return_token_losses (the trainer's call under loss.impl=naive)
    makes the N x V logits matmul once, not a second time for the per-token losses, and its
    per-token losses are the ones its reduced loss was made from."""
    n, v = 64, 300
    h, w, _, labels = make_inputs(n, v, torch.float32, False)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    with TensorMemoryTracker(record_min_numel=n * v) as mem:
        loss, tokens = linear_cross_entropy(hh, ww, labels, reduction=reduction, impl="naive",
                                            return_token_losses=True)
    products = [op for op, _, shape in mem.made if shape == (n, v) and "mm" in op]
    assert len(products) == 1, mem.made
    valid = labels != -100
    expected = tokens.sum() / valid.sum() if reduction == "mean" else tokens.sum()
    torch.testing.assert_close(loss.detach(), expected)
    assert not tokens.requires_grad
    loss.backward()
    ref_h, ref_w = h.clone().requires_grad_(), w.clone().requires_grad_()
    reference_linear_cross_entropy(ref_h, ref_w, labels, reduction=reduction).backward()
    torch.testing.assert_close(hh.grad, ref_h.grad)
    torch.testing.assert_close(ww.grad, ref_w.grad)
