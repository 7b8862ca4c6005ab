"""One evaluator for every recommender: full ranking over the catalog on a leave-last-out split.

:class:`Evaluator` scores anything that implements :class:`genrec.recommender.Recommender`
(the generative model on either backend, SASRec, popularity) on the same users with the same
metrics code, under either protocol: seen items kept (TIGER's, what most generative papers
report) or seen items excluded (what products do). Every result records what it was measured
on: split, users, user sample and its seed, protocol, commit.

Under the cold-start protocol (``data.cold_items``) a result also scores the users whose test
target is a held-out item (``cold_targets``) and the others (``warm_targets``) apart, and says
how much of what was recommended was cold (``cold_share@K``): a model that never recommends a
new item shows 0 there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genrec.data import SPLITS, PreparedDataset
from genrec.errors import InputError
from genrec.io import atomic_open, atomic_write_json
from genrec.metrics import evaluate_rankings
from genrec.recommender import Recommendation, Recommender, ranked_indices
from genrec.runs import git_commit


def protocol_name(exclude_seen: bool) -> str:
    """How a result names its protocol in tables."""
    return "seen items excluded" if exclude_seen else "seen items kept"


@dataclass
class EvalResult:
    """Metrics of one recommender on one user set, and what they were measured on."""

    metrics: dict[str, float]
    users: list[str]
    rankings: list[list[Recommendation]] = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.info, **self.metrics, **self.groups}


class Evaluator:
    """Scores recommenders on a split of a prepared dataset.

    Args:
        dataset: the prepared data (its item rows are the catalog rows).
        split: ``valid`` or ``test``.
        max_users: score at most this many users (0: all), sampled with ``seed``.
        seed: the user-sample seed (the same users for every model evaluated with it).
        exclude_seen: the seen-excluded protocol: a user's history is never recommended.
        k: the largest cut-off; metrics at 5, 10 and 20 up to ``k``.
    """

    def __init__(
        self,
        dataset: PreparedDataset,
        split: str = "test",
        max_users: int = 0,
        seed: int = 0,
        exclude_seen: bool = False,
        k: int = 10,
    ):
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
        if k < 1:
            raise InputError(f"k={k} must be at least 1", "use k=10 for the usual metrics")
        self.dataset, self.split, self.k = dataset, split, k
        self.max_users, self.seed, self.exclude_seen = max_users, seed, exclude_seen
        self.users, self.histories, self.targets = dataset.split_rows(split, max_users, seed)
        self.ks = tuple(x for x in (5, 10, 20) if x <= k) or (k,)

    def evaluate(self, recommender: Recommender, progress: bool = False, **recommend_kwargs: Any) -> EvalResult:
        """Recommend for every user and score it; ``recommend_kwargs`` go to ``recommend`` (e.g. num_beams)."""
        exclude = self.histories if self.exclude_seen else None
        t0 = time.perf_counter()
        ranked = recommender.recommend(self.histories, k=self.k, exclude=exclude, progress=progress, **recommend_kwargs)
        seconds = time.perf_counter() - t0
        rows = ranked_indices(ranked)
        metrics = evaluate_rankings(rows, self.targets, self.dataset.n_items, ks=self.ks)
        metrics["seconds_per_user"] = seconds / max(1, len(self.users))
        groups = self._cold_groups(rows, metrics) if self.dataset.cold_items else {}
        info = {
            "split": self.split,
            "users": len(self.users),
            "max_users": self.max_users,
            "user_sample_seed": self.seed,
            "k": self.k,
            "exclude_seen": self.exclude_seen,
            "protocol": protocol_name(self.exclude_seen),
            "commit": git_commit(),
        }
        return EvalResult(metrics, self.users, ranked, info, groups)

    def _cold_groups(self, ranked: list[list[int]], metrics: dict[str, float]) -> dict[str, dict[str, float]]:
        """Metrics of the cold-target and warm-target users apart (adds ``cold_share@K`` to ``metrics``)."""
        cold = set(self.dataset.cold_rows())
        slots = [i for row in ranked for i in row[: self.k]]
        metrics[f"cold_share@{self.k}"] = sum(i in cold for i in slots) / max(1, len(slots))
        groups = {}
        for name, want in (("cold_targets", True), ("warm_targets", False)):
            pick = [j for j, t in enumerate(self.targets) if (t in cold) == want]
            if pick:
                groups[name] = evaluate_rankings(
                    [ranked[j] for j in pick], [self.targets[j] for j in pick], self.dataset.n_items, ks=self.ks
                )
        return groups


def write_recommendations(path: Path, result: EvalResult) -> None:
    """One JSON line per user: ``{"user_id", "items": [{item_id, sid, title, score}, ...]}``."""
    with atomic_open(path) as f:
        for u, row in zip(result.users, result.rankings):
            f.write(json.dumps({"user_id": u, "items": [r.to_dict() for r in row]}) + "\n")


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    k: int = 10,
    num_beams: int = 20,
    batch_size: int = 16,
    max_users: int = 0,
    seed: int = 0,
    bf16: bool = True,
    exclude_seen: bool = False,
    progress: bool = True,
    new_item_slots: int = 0,
    device: str = "auto",
) -> dict:
    """Metrics of RUN/model and of the popularity baseline on ``split``; written to RUN/eval/SPLIT.json.

    With ``exclude_seen`` the files are ``SPLIT_xseen.json`` (both protocols can sit side by side).
    Under the cold-start protocol, ``new_item_slots`` places of each list go to the held-out items
    (see :meth:`~genrec.decoding.hf.GenerativeRecommender.recommend`); the file name then ends
    in ``_newN``. ``device`` is where the model decodes (:func:`genrec.precision.compute_device`).
    """
    from genrec.decoding.hf import GenerativeRecommender
    from genrec.models.popularity import PopularityRecommender
    from genrec.precision import autocast, use_bf16

    run = Path(run_dir)
    dataset = PreparedDataset.load(run / "data")
    evaluator = Evaluator(dataset, split, max_users, seed, exclude_seen, k)
    rec = GenerativeRecommender.from_folder(run / "model", device=device)
    bf16 = use_bf16(bf16, rec.device)  # what the result records is what ran
    new = {"new_items": dataset.cold_rows(), "new_item_slots": new_item_slots} if new_item_slots else {}
    with autocast(bf16, rec.device):
        model = evaluator.evaluate(rec, progress=progress, num_beams=num_beams, batch_size=batch_size, **new)
    pop = evaluator.evaluate(PopularityRecommender(rec.catalog).fit(dataset.train_rows(), dataset.n_items))
    pop.metrics.pop("seconds_per_user", None)
    result = {
        **model.info,
        "num_beams": num_beams,
        "bf16": bf16,
        "device": rec.device.type,
        "new_item_slots": new_item_slots,
        "genrec": {**model.metrics, **model.groups},
        "popularity": {**pop.metrics, **pop.groups},
    }
    out = run / "eval"
    name = split + ("_xseen" if exclude_seen else "") + (f"_new{new_item_slots}" if new_item_slots else "")
    atomic_write_json(out / f"{name}.json", result)
    write_recommendations(out / f"{name}_recommendations.jsonl", model)
    return result


def format_table(result: dict) -> str:
    """Markdown table of the model against popularity (and of cold / warm targets apart, when scored)."""
    keys = [k for k in result["genrec"] if "@" in k or k in ("mrr", "invalid_rate")]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in ("genrec", "popularity"):
        lines.append(f"| {name} | " + " | ".join(f"{result[name][k]:.4f}" for k in keys) + " |")
        for group in ("cold_targets", "warm_targets"):
            if group in result[name]:
                m = result[name][group]
                lines.append(
                    f"| {name}, {group.replace('_', ' ')} ({m['users']} users) | "
                    + " | ".join(f"{m[k]:.4f}" if k in m else "" for k in keys)
                    + " |"
                )
    return "\n".join(lines)
