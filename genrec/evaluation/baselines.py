"""Baselines in the same harness as genrec runs: fit, score with the one evaluator, save.

``genrec baseline sasrec|popularity`` call these. Results go to ``RUN/baselines/NAME/`` with
everything needed to compare rows: split, protocol, user sample and seed, model seed, commit.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from genrec.config import EmbeddingConfig, SASRecConfig
from genrec.data import SPLITS, PreparedDataset
from genrec.errors import InputError
from genrec.evaluation.evaluator import Evaluator
from genrec.io import atomic_write_json
from genrec.models.content import ContentRecommender
from genrec.models.popularity import PopularityRecommender
from genrec.models.sasrec import SASRecRecommender


def _metrics_name(split: str, exclude_seen: bool) -> str:
    return f"metrics_{split}" + ("_xseen" if exclude_seen else "") + ".json"


def run_sasrec(
    run_dir: str | Path,
    config: SASRecConfig,
    split: str = "test",
    max_users: int = 0,
    progress: bool = True,
    sample_seed: int = 0,
    exclude_seen: bool = False,
) -> dict[str, Any]:
    """Fit SASRec on RUN/data, score ``split``; write RUN/baselines/sasrec/metrics_{split}.json + model.

    Model seeds other than 0 write to ``RUN/baselines/sasrec-seedN`` so seeds do not overwrite
    each other. ``max_users`` samples users with ``sample_seed`` (not the model seed), the
    sampler of ``genrec evaluate --max-users N --seed S``, so rows compare.
    """
    if split not in SPLITS:  # before training, not after minutes of it
        raise InputError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    run = Path(run_dir)
    dataset = PreparedDataset.load(run / "data")
    evaluator = Evaluator(dataset, split, max_users, sample_seed, exclude_seen)
    rec = SASRecRecommender(config).fit(dataset, progress=progress)
    result = evaluator.evaluate(rec)
    out = run / "baselines" / ("sasrec" if config.seed == 0 else f"sasrec-seed{config.seed}")
    rec.save(out)
    report = {
        **result.to_dict(),
        "model_seed": config.seed,
        "best_epoch": rec.best_epoch,
        "best_valid_ndcg@10": rec.best_valid_ndcg,
        "train_seconds": round(rec.train_seconds, 3),
        "config": asdict(config),
    }
    atomic_write_json(out / _metrics_name(split, exclude_seen), report)
    return {**result.metrics, **result.groups}


def run_popularity(
    run_dir: str | Path,
    split: str = "test",
    k: int = 10,
    max_users: int = 0,
    sample_seed: int = 0,
    exclude_seen: bool = False,
) -> dict[str, Any]:
    """Most frequent training items, scored on ``split``; RUN/baselines/popularity/metrics_{split}.json."""
    run = Path(run_dir)
    dataset = PreparedDataset.load(run / "data")
    evaluator = Evaluator(dataset, split, max_users, sample_seed, exclude_seen, k)
    result = evaluator.evaluate(PopularityRecommender().fit(dataset.train_rows(), dataset.n_items))
    atomic_write_json(run / "baselines" / "popularity" / _metrics_name(split, exclude_seen), result.to_dict())
    return {**result.metrics, **result.groups}


def run_content(
    run_dir: str | Path,
    embedding: EmbeddingConfig,
    split: str = "test",
    k: int = 10,
    max_users: int = 0,
    sample_seed: int = 0,
    exclude_seen: bool = False,
    max_history: int = 20,
) -> dict[str, Any]:
    """Nearest items to the history's text vectors; RUN/baselines/content/metrics_{split}.json.

    Items are embedded as the tokenize stage embeds them (``embedding.model`` over
    ``embedding.template``, else the dataset's default template), new items included.
    """
    from genrec.io import cache_dir
    from genrec.tokenization.embeddings import item_texts, text_embeddings

    run = Path(run_dir)
    dataset = PreparedDataset.load(run / "data")
    if not dataset.text_fields:
        raise InputError(
            "the items have no text, so the content baseline has nothing to compare", "use a dataset with item text"
        )
    evaluator = Evaluator(dataset, split, max_users, sample_seed, exclude_seen, k)
    texts = item_texts(dataset.items, embedding.template or dataset.default_template)
    vectors = text_embeddings(
        texts, model=embedding.model, batch_size=embedding.batch_size, cache_dir=cache_dir("embeddings")
    )
    rec = ContentRecommender(vectors, max_history=max_history)
    result = evaluator.evaluate(rec)
    report = {**result.to_dict(), "embedding_model": embedding.model, "decay": rec.decay}
    atomic_write_json(run / "baselines" / "content" / _metrics_name(split, exclude_seen), report)
    return {**result.metrics, **result.groups}
