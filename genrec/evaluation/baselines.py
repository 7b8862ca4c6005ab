"""Baselines in the same harness as genrec runs (same splits, same metrics code)."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np


class PopularityRecommender:
    """Most frequent items in the training interactions.

    Args:
        exclude_seen: skip items already in the user's history (stated in results).
    """

    def __init__(self, exclude_seen: bool = False):
        self.exclude_seen = exclude_seen

    def fit(self, train_sequences: Iterable[Sequence[int]], n_items: int) -> "PopularityRecommender":
        counts = Counter(i for seq in train_sequences for i in seq)
        freq = np.zeros(n_items, dtype=np.int64)
        for item, c in counts.items():
            freq[item] = c
        # stable: ties keep catalog order, so results are deterministic
        self.order_ = np.argsort(-freq, kind="stable")
        self.counts_ = freq
        return self

    def recommend(self, histories: Sequence[Sequence[int]], k: int = 10) -> list[list[int]]:
        out = []
        head = self.order_[: k + (max(map(len, histories)) if self.exclude_seen and histories else 0)].tolist()
        for h in histories:
            if self.exclude_seen:
                seen = set(h)
                out.append([i for i in head if i not in seen][:k])
            else:
                out.append(head[:k])
        return out
