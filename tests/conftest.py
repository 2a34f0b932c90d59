"""Shared test fixtures."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of small tensors (threads spin-wait against other jobs on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request) -> Iterator[Path]:
    """A folder shared by one test module's tests and removed when the module ends: a toycity checkpoint is
    100-330 MB, and the suite's runs would otherwise fill ~15 GB of disk (``tmp_path`` folders of passing tests
    are removed at once: ``tmp_path_retention_policy`` in setup.cfg)."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)
