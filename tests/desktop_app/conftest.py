"""Fixtures for the desktop core: a fresh workspace and a small sample dataset."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from desktop_app.core.dataset_sample import write_sample_dataset
from desktop_app.core.workspace import Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.open(tmp_path / "ws")
    yield workspace
    workspace.close()


@pytest.fixture(scope="session")
def sample_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "shapes"
    write_sample_dataset(out, seed=0, count=40, size=96)
    return out


@pytest.fixture
def sample(sample_master: Path, tmp_path: Path) -> Path:
    """A private copy of the sample dataset that a test may change."""
    dest = tmp_path / "shapes"
    shutil.copytree(sample_master, dest)
    return dest
