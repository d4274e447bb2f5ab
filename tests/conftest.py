"""Shared test setup.

Tests use tiny models, for which torch's intra-op threads cost more than they save (a tiny
forward and backward ran ~100x slower with 2 threads on a loaded 2-core machine), so every test
runs single-threaded. Nothing is downloaded: sentence-transformers is kept offline.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
