"""Evaluation of a trained run on a split: full ranking over the catalog by constrained decoding."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path


from genrec.data import PreparedDataset
from genrec.evaluation.baselines import PopularityRecommender
from genrec.evaluation.metrics import evaluate_rankings
from genrec.precision import autocast, use_bf16
from genrec.serving.recommender import Recommender
from genrec.errors import GenrecError

SPLITS = ("valid", "test")


def split_rows(dataset: PreparedDataset, split: str, max_users: int = 0, seed: int = 0):
    """(user ids, histories as catalog rows, target rows) of a split, optionally sampled."""
    if split not in SPLITS:
        raise GenrecError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    rows = dataset.split(split)
    if max_users and len(rows) > max_users:
        rows = sorted(random.Random(seed).sample(rows, max_users))
    index = dataset.item_index()
    return ([u for u, _, _ in rows], [[index[i] for i in h] for _, h, _ in rows], [index[t] for _, _, t in rows])


def evaluate_run(run_dir: str | Path, split: str = "test", k: int = 10, num_beams: int = 20,
                 batch_size: int = 16, max_users: int = 0, seed: int = 0, bf16: bool = True,
                 exclude_seen: bool = False, progress: bool = True) -> dict:
    """Metrics of RUN/model and of the popularity baseline on ``split``; written to RUN/eval/SPLIT.json."""
    from genrec.runs import git_commit

    run = Path(run_dir)
    commit = git_commit()
    bf16 = use_bf16(bf16)  # what the result records is what ran
    dataset = PreparedDataset.load(run / "data")
    rec = Recommender.from_folder(run / "model")
    users, histories, targets = split_rows(dataset, split, max_users, seed)
    exclude = histories if exclude_seen else None
    t0 = time.perf_counter()
    with autocast(bf16):
        ranked = rec.recommend(histories, k=k, num_beams=num_beams, batch_size=batch_size,
                               exclude=exclude, progress=progress)
    seconds = time.perf_counter() - t0
    n_items = len(rec.catalog)
    ks = tuple(x for x in (5, 10, 20) if x <= k)
    model_metrics = evaluate_rankings([[r.index for r in row] for row in ranked], targets, n_items, ks=ks)
    model_metrics["seconds_per_user"] = seconds / max(1, len(users))
    index = dataset.item_index()
    pop = PopularityRecommender(exclude_seen=exclude_seen).fit(
        [[index[i] for i in s] for s in dataset.train_sequences().values()], n_items)
    pop_metrics = evaluate_rankings(pop.recommend(histories, k), targets, n_items, ks=ks)
    result = {"split": split, "users": len(users), "max_users": max_users, "user_sample_seed": seed, "k": k,
              "num_beams": num_beams, "exclude_seen": exclude_seen, "bf16": bf16, "commit": commit,
              "genrec": model_metrics, "popularity": pop_metrics}
    out = run / "eval"
    out.mkdir(exist_ok=True)
    (out / f"{split}.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(out / f"{split}_recommendations.jsonl", "w") as f:
        for u, h, row in zip(users, histories, ranked):
            f.write(json.dumps({"user_id": u, "items": [r.to_dict() for r in row]}) + "\n")
    return result


def format_table(result: dict) -> str:
    """Markdown table of the model against popularity."""
    keys = [k for k in result["genrec"] if "@" in k or k in ("mrr", "invalid_rate")]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in ("genrec", "popularity"):
        lines.append(f"| {name} | " + " | ".join(f"{result[name][k]:.4f}" for k in keys) + " |")
    return "\n".join(lines)
