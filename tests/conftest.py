import atexit
import os
import shutil
import tempfile

import pytest
import torch

# A HOME of the test session's own, for this process and every process it starts: no test reads
# what earlier runs or the user left in ~ (Ray's auth token, compile caches, stale build locks),
# and none leaves anything there. Set before anything reads it.
_SESSION_HOME = tempfile.mkdtemp(prefix="scaleq-tests-home-")
os.environ["HOME"] = _SESSION_HOME
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)

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
