"""Evaluation tests run single-threaded: on the shared 2-core machine, oversubscribed torch threads
make small convolutions (Inception, AlexNet) an order of magnitude slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
