"""Ranking metrics for next-item prediction with one held-out target per user.

Every function takes ``ranked``: per user, the returned item indices (catalog rows)
best first, and ``targets``: per user, the one relevant item. Relevance is binary,
so with the target at 0-based rank ``r``:

* Recall@K = 1 if ``r < K`` (equal to HitRate@K with one target);
* NDCG@K = ``1 / log2(r + 2)`` if ``r < K`` (the ideal DCG is 1);
* MRR = ``1 / (r + 1)``.

A returned entry that is ``None``, negative or not a catalog row still takes its
slot in the ranking (it is what the model returned) but never matches a target;
:func:`invalid_rate` counts them. Users with fewer than K returned items simply have
fewer chances. Lists are padded into one array so each metric is a few numpy ops.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

_MISSING = -1  # filler for None entries and for the padding of short lists


def _as_matrix(ranked: Sequence[Sequence[int | None]], k: int | None = None) -> np.ndarray:
    """(users, width) int64 array of the first ``k`` entries per user; -1 for None/padding."""
    width = max((len(r) for r in ranked), default=0)
    if k is not None:
        width = min(width, k)
    out = np.full((len(ranked), width), _MISSING, dtype=np.int64)
    for u, row in enumerate(ranked):
        row = row[:width]
        out[u, : len(row)] = [_MISSING if i is None else int(i) for i in row]
    return out


def _target_ranks(ranked: Sequence[Sequence[int | None]], targets: Sequence[int], k: int | None = None) -> np.ndarray:
    """0-based rank of each user's target within the first ``k`` entries, or -1 if absent."""
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} rankings but {len(targets)} targets")
    m = _as_matrix(ranked, k)
    t = np.asarray(targets, dtype=np.int64).reshape(-1, 1)
    # a negative target would match the -1 filler; no real target is negative
    hits = (m == t) & (t >= 0)
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1)


def recall_at_k(ranked: Sequence[Sequence[int | None]], targets: Sequence[int], k: int) -> float:
    """Share of users whose target is among their first ``k`` items."""
    if not len(ranked):
        return 0.0
    return float((_target_ranks(ranked, targets, k) >= 0).mean())


def ndcg_at_k(ranked: Sequence[Sequence[int | None]], targets: Sequence[int], k: int) -> float:
    """Mean NDCG@k with one relevant item: ``1 / log2(rank + 2)`` when it is in the top ``k``."""
    if not len(ranked):
        return 0.0
    r = _target_ranks(ranked, targets, k)
    gain = np.where(r >= 0, 1.0 / np.log2(np.maximum(r, 0) + 2.0), 0.0)
    return float(gain.mean())


def mrr(ranked: Sequence[Sequence[int | None]], targets: Sequence[int], k: int | None = None) -> float:
    """Mean reciprocal rank of the target (0 when absent), over the first ``k`` items if given."""
    if not len(ranked):
        return 0.0
    r = _target_ranks(ranked, targets, k)
    return float(np.where(r >= 0, 1.0 / (np.maximum(r, 0) + 1.0), 0.0).mean())


def invalid_rate(ranked: Sequence[Sequence[int | None]], n_items: int | None = None) -> float:
    """Share of returned entries that are None, negative, or (given ``n_items``) not a catalog row."""
    lengths = np.fromiter((len(r) for r in ranked), dtype=np.int64, count=len(ranked))
    total = int(lengths.sum())
    if total == 0:
        return 0.0
    m = _as_matrix(ranked)
    returned = np.arange(m.shape[1]) < lengths[:, None]  # padding is not a returned entry
    bad = m < 0
    if n_items is not None:
        bad |= m >= n_items
    return float((bad & returned).sum() / total)


def coverage(ranked: Sequence[Sequence[int | None]], n_items: int, k: int) -> float:
    """Share of the catalog's ``n_items`` items that appear in anyone's top ``k``."""
    if n_items <= 0:
        raise ValueError("n_items must be positive")
    m = _as_matrix(ranked, k)
    valid = m[(m >= 0) & (m < n_items)]
    return float(len(np.unique(valid)) / n_items)


def evaluate_rankings(
    ranked: Sequence[Sequence[int | None]], targets: Sequence[int], n_items: int, ks: Sequence[int] = (5, 10)
) -> dict[str, float]:
    """All metrics of one set of rankings.

    Returns a dict with ``recall@K`` and ``ndcg@K`` for each K in ``ks``, ``mrr`` (over
    the whole returned list), ``invalid_rate``, ``coverage@K`` for the largest K, and
    ``users`` (how many rankings were scored).
    """
    if not ks:
        raise ValueError("ks must name at least one cutoff")
    result: dict[str, float] = {}
    for k in ks:
        result[f"recall@{k}"] = recall_at_k(ranked, targets, k)
    for k in ks:
        result[f"ndcg@{k}"] = ndcg_at_k(ranked, targets, k)
    result["mrr"] = mrr(ranked, targets)
    result["invalid_rate"] = invalid_rate(ranked, n_items)
    result[f"coverage@{max(ks)}"] = coverage(ranked, n_items, max(ks))
    result["users"] = len(ranked)
    return result
