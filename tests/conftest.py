import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Without a GPU, Triton kernels can only run in its interpreter, and triton.jit decides which at decoration time:
# set it before any test module (or torch internals) imports triton.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("TRITON_INTERPRET") == "1":
    from tests.triton_interpreter import patch_loop_bounds

    patch_loop_bounds()

import pytest
import torch

# pytest-xdist runs one worker per core: keep each worker to one thread so they do not fight.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    """Seed everything and keep float32 matmuls exact (no TF32) for every test."""
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield


@pytest.fixture
def nan_empty():
    """Make torch.empty/empty_like return NaN-filled tensors, so reading unwritten memory fails the test."""
    from slimkv.bench.harness import nan_filled_empty

    with nan_filled_empty():
        yield
