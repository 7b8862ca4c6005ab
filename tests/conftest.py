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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, smollm2_dir) -> Path:
    """The bundled set prepared and tokenized once per session (read-only for tests: copy it)."""
    from genrec.config import load_config
    from genrec.data import prepare_stage
    from genrec.tokenization.stage import tokenize_stage

    run = tmp_path_factory.mktemp("demo_run")
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"run_dir={run}"])
    prepare_stage(cfg)
    tokenize_stage(cfg)
    return run


def copy_prepared(src: Path, dst: Path) -> Path:
    """A fresh run folder holding the data and tokenize stages of ``src``."""
    import shutil

    dst.mkdir(parents=True)
    for name in ("data", "tokenize", "manifest.json"):
        p = src / name
        (shutil.copytree if p.is_dir() else shutil.copy)(p, dst / name)
    return dst
