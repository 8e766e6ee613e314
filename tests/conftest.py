import os

import pytest
import torch

# One intra-op thread per test process: pytest-xdist runs two processes on these 2-core machines, and
# busy-waiting OpenMP threads stall some ops badly when oversubscribed.
torch.set_num_threads(int(os.environ.get("TRACTABLE_TEST_THREADS", "1")))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
