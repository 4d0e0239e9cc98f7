import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_default_dtype():
    """Tests may change the default dtype; put it back after each one."""
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
