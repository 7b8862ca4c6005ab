"""Shared fixtures: the shared datasets and the offline SmolLM2 folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
# the tests' caches (converted SmolLM2, text embeddings, fitted SASRecs) stay in the checkout,
# beside the `smollm2_dir` fixture's folder, instead of the user's ~/.cache/genrec
os.environ.setdefault("GENREC_CACHE", str(REPO / ".cache"))
SHARED_DATA = REPO.parent / "shared" / "data"

#: the config tests start from and shrink with overrides: the SmolLM2 demo recipe (semantic IDs
#: from item text, so items can be added by text; plain next-item training, no teacher), so a test
#: states every setting it changes
TRAIN_BASE = REPO / "configs" / "demo-smollm2.yaml"


def shared_dataset(name: str) -> Path:
    """Folder of a dataset in ../shared/data, or skip the test when it is not there."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (the shared datasets live beside the repository)")
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain HF folder, converted from the packaged GGUF once.

    `make test` runs two pytest workers: the first converts, the other waits on the lock and
    finds the folder, instead of swapping in its own copy while the first reads it.
    """
    from filelock import FileLock

    from genrec.models.base_lm import prepare_smollm2

    cache = REPO / ".cache" / "models"
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / "smollm2.lock")):
        return prepare_smollm2(cache)


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
    cfg = load_config(TRAIN_BASE, [f"run_dir={run}"])
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


# a small scratch Llama trained briefly on the bundled set: a real exported run for serving tests
TINY_TRAINED = [
    "model.name=scratch",
    "model.scratch_hidden=128",
    "model.scratch_layers=2",
    "model.scratch_intermediate=256",
    "train.finetune=full",
    "train.lr=0.003",
    "train.batch_size=32",
    "train.bf16=false",
    "train.max_steps=150",
    "train.eval_every=0",
    "train.eval_users=40",
    "train.save_every=0",
    "train.log_every=50",
    "train.tasks={next_item: 1.0}",
    "eval.num_beams=10",
    "eval.bf16=false",
    "data.max_history=8",
]


@pytest.fixture(scope="session")
def trained_demo_run(demo_run, tmp_path_factory) -> Path:
    """RUN with an exported model (RUN/model) trained for 150 steps; read-only for tests: copy it.

    RUN/train/state.json holds the training state, its last validation included.
    """
    from genrec.config import load_config
    from genrec.training.trainer import Trainer

    import torch

    run = copy_prepared(demo_run, tmp_path_factory.mktemp("trained") / "run")
    # the validation after the last step scores 200 users: enough to tell learning from chance
    cfg = load_config(TRAIN_BASE, [f"run_dir={run}", *TINY_TRAINED, "train.eval_users=200"])
    # one thread: a tiny model gains nothing from two, and two OpenMP threads on a busy
    # 2-core machine run many times slower than one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, progress=False).train()
    finally:
        torch.set_num_threads(threads)
    return run


def copy_run(src: Path, dst: Path) -> Path:
    """A writable copy of a whole run folder (data, tokenize, model)."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("train"))
    return dst


def wait_ready(client, timeout: float = 120) -> None:
    """The engine of an app under FastAPI's TestClient loads in the background: wait until /health says ready."""
    deadline = time.time() + timeout
    while (r := client.get("/health")).status_code != 200:
        assert r.status_code == 503 and r.json()["status"] == "starting", r.text
        assert time.time() < deadline, "the engine did not get ready"
        time.sleep(0.05)
