"""Triton kernels run in the CPU interpreter here unless a GPU is present.

triton.jit chooses interpreted or compiled when a function is defined: triton.language's
helpers when triton is first imported, our kernel when kernels/triton_ce.py is. So the
variable must be set before any import of triton; conftests load at collection, before any
test runs (and no test module imports triton at collection time).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
