"""Shared pytest set-up: Triton interpreter on CPU-only machines, GPU tests skipped without CUDA."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Before any test module imports triton kernels: they then run in the interpreter on CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.gpu`` tests (selected with ``-m gpu``) when CUDA is unavailable."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo_root() -> Path:
    """Root of the checkout (where run.py and conf/ live)."""
    return REPO_ROOT
