import os

import pytest
import torch

# Triton kernels run on the CPU under Triton's interpreter; it must be chosen before anything
# imports triton (torch_geometric does), so here, before the test modules are collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _restore_default_dtype():
    """Tests may change the default dtype; put it back after each one."""
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
