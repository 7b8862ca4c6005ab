"""The content baseline: items whose text is nearest to the text of the user's history.

It needs no interactions with an item, only its text, so it ranks new items (the cold-start
protocol) as well as old ones: the fair opponent of a generative model whose semantic IDs
come from item text. A user is the recency-weighted mean of their history items' text
vectors (the latest item weighs 1, the one before ``decay``, then ``decay**2``...), and items
are ranked by cosine similarity to it.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from genrec.recommender import Recommendation, top_k_by_score


class ContentRecommender:
    """Nearest items to the history by text vectors (a :class:`~genrec.recommender.Recommender`).

    Args:
        item_vectors: ``(n_items, d)`` text vectors, one per catalog row (e.g. MiniLM's).
        decay: weight of each older history item relative to the next one (1.0: plain mean).
        max_history: most recent history items read.
        catalog: optional object with ``item_ids``/``titles`` to name the returned items.
    """

    def __init__(self, item_vectors: np.ndarray, decay: float = 0.8, max_history: int = 20, catalog=None):
        vecs = np.asarray(item_vectors, dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        self.vectors = torch.from_numpy(vecs / np.maximum(norms, 1e-12))
        self.decay, self.max_history, self.catalog = decay, max_history, catalog

    def user_vectors(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """``(users, d)``: each history's recency-weighted mean of its items' vectors."""
        out = torch.zeros(len(histories), self.vectors.shape[1])
        for u, history in enumerate(histories):
            recent = list(history)[-self.max_history :]
            if not recent:
                continue
            weights = torch.tensor([self.decay**age for age in range(len(recent) - 1, -1, -1)])
            out[u] = weights @ self.vectors[recent]
        return out

    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int = 10,
        *,
        exclude: Sequence[Iterable[int]] | None = None,
        allow: Sequence[Iterable[int]] | None = None,
        progress: bool = False,
        batch_size: int = 512,
    ) -> list[list[Recommendation]]:
        """Top ``k`` catalog rows per history by cosine similarity (``exclude``/``allow`` per user)."""
        out: list[list[Recommendation]] = []
        for start in tqdm(range(0, len(histories), batch_size), desc="content", unit="batch", disable=not progress):
            stop = start + batch_size
            scores = self.user_vectors(histories[start:stop]) @ self.vectors.T
            out += top_k_by_score(
                scores,
                k,
                exclude[start:stop] if exclude is not None else None,
                allow[start:stop] if allow is not None else None,
                self.catalog,
            )
        return out
