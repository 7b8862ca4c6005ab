"""Shared fixtures: the shared datasets and the offline SmolLM2 folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Folder of a dataset in ../shared/data, or skip the test when it is not there."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (the shared datasets live beside the repository)")
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain HF folder, converted from the packaged GGUF once."""
    from genrec.training.models import prepare_smollm2
    return prepare_smollm2(REPO / ".cache" / "models")


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(smollm2_dir: Path) -> Path:
    return smollm2_dir
