"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def float64_default():
    """Build float64 tensors by default inside a test; restore the default afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
