"""Shared test setup: one torch thread per test, the ``device`` parameter, the markers.

Device-generic tests (PyTorch's device-type pattern: one test body, a ``device`` argument) run once
per available device: ``[cpu]`` always, ``[cuda]`` when ``torch.cuda.is_available()``. The CUDA
instances, and every test of ``tests/test_device_cuda.py``, carry the ``cuda`` marker:

    python -m pytest -m "not slow"            # the fast suite (on a GPU machine: CPU and CUDA)
    python -m pytest -m "cuda and not slow"   # only what runs on the GPU
"""
import pytest
import torch

#: The devices a device-generic test runs on.
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
#: Why a CUDA-only test is skipped here (also the reason `benchmarks/gpu_check.py` records).
NO_CUDA = "needs CUDA: torch.cuda.is_available() is False on this machine"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than about 5 s on one CPU core; "
                                       "python -m pytest -m 'not slow' leaves these out")
    config.addinivalue_line("markers", "cuda: runs on a CUDA device (the [cuda] instances of device-generic "
                                       "tests and tests/test_device_cuda.py); skipped or absent without CUDA")


def pytest_generate_tests(metafunc):
    """Parametrise every test that takes ``device`` over :data:`DEVICES` (ids ``cpu`` / ``cuda``),
    unless the test parametrises ``device`` itself."""
    if "device" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if "device" in names:
            return
    metafunc.parametrize("device", [pytest.param(d, id=d, marks=[pytest.mark.cuda] if d == "cuda" else [])
                                    for d in DEVICES])


@pytest.fixture(autouse=True)
def exact_cuda(request):
    """CUDA tests compare with CPU results and with themselves: full float32 (cuDNN convolutions
    use TF32 by default), deterministic cuDNN algorithms, no autotuning (the training engine turns
    ``cudnn.benchmark`` on). Restored after each test."""
    if request.node.get_closest_marker("cuda") is None or not torch.cuda.is_available():
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark)
    cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark = False, False, True, False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test: the tensors are tiny, and two threads spinning against other
    processes on a 2-core machine made tiny models ten times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
