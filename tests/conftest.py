"""Shared test setup."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test: the tensors are tiny, and two threads spinning against other
    processes on a 2-core machine made tiny models ten times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
