"""Shared fixtures: the ../shared assets (skipped where absent) and small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HAWQ_SHARED", ROOT.parent / "shared"))
CIFAR_DIR = SHARED / "data" / "cifar10"
RESNET20_CKPT = SHARED / "models" / "resnet20-12fca82f.th"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    if not (CIFAR_DIR / "test.npz").is_file():
        pytest.skip("../shared/data/cifar10 is absent")
    return CIFAR_DIR


@pytest.fixture(scope="session")
def resnet20_ckpt() -> Path:
    if not RESNET20_CKPT.is_file():
        pytest.skip("../shared/models/resnet20-12fca82f.th is absent")
    return RESNET20_CKPT


@pytest.fixture()
def one_thread():
    """One intra-op thread for tiny models: a second only adds spin-waiting on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
