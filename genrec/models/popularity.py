"""The popularity baseline: the most frequent training items, for everyone."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import torch

from genrec.recommender import Recommendation, top_k_by_score


class PopularityRecommender:
    """Most frequent items in the training interactions (a :class:`~genrec.recommender.Recommender`).

    Ties keep catalog order, so results are deterministic.

    Args:
        catalog: optional object with ``item_ids``/``titles`` to name the returned items.
    """

    def __init__(self, catalog=None):
        self.catalog = catalog

    def fit(self, train_sequences: Iterable[Sequence[int]], n_items: int) -> "PopularityRecommender":
        counts = Counter(i for seq in train_sequences for i in seq)
        freq = torch.zeros(n_items, dtype=torch.float64)
        for item, c in counts.items():
            freq[item] = c
        # the score is the reverse rank of a stable sort, so ties keep catalog order (topk alone
        # is not stable) and every score is an exact float32
        order = torch.argsort(-freq, stable=True)
        self.scores_ = torch.empty(n_items, dtype=torch.float32)
        self.scores_[order] = torch.arange(n_items, 0, -1, dtype=torch.float32)
        self.counts_ = freq.long()
        return self

    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int = 10,
        *,
        exclude: Sequence[Iterable[int]] | None = None,
        allow: Sequence[Iterable[int]] | None = None,
        progress: bool = False,
    ) -> list[list[Recommendation]]:
        """The top ``k`` items by training count, per user (``exclude``/``allow`` per user)."""
        out: list[list[Recommendation]] = []
        for start in range(0, len(histories), 1024):
            n = len(histories[start : start + 1024])
            out += top_k_by_score(
                self.scores_.expand(n, -1),
                k,
                exclude[start : start + n] if exclude is not None else None,
                allow[start : start + n] if allow is not None else None,
                self.catalog,
            )
        return out
