"""Triton kernels run in the CPU interpreter here unless a GPU is present.

triton.jit chooses interpreted or compiled when kernels/triton_ce.py is imported, so the
variable must be set before that import; this conftest loads before the test modules.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
