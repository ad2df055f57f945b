"""Shared test helpers: drive a ClientApp in-process, make reply messages."""

from __future__ import annotations

import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Two cores on CI: keep each test's torch to one thread, as the simulation does.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _known_harmless_warnings():
    with warnings.catch_warnings():
        # Opacus: secure_mode needs torchcsprng (not available for torch 2.13).
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        # torch: raised by Opacus's hooks when the input needs no gradient.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        # Opacus RDP analysis: orders above 63 are not searched.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield
