"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genrec.metrics import coverage, evaluate_rankings, invalid_rate, mrr, ndcg_at_k, recall_at_k

# target of user 0 at rank 0, user 1 at rank 2, user 2 absent, user 3 at rank 6
RANKED = [[7, 1, 2, 3, 4, 5, 6, 8], [0, 1, 9, 3, 4, 5, 6, 8], [0, 1, 2, 3, 4, 5, 6, 8], [0, 1, 2, 3, 4, 5, 11, 8]]
TARGETS = [7, 9, 10, 11]


def test_recall():
    assert recall_at_k(RANKED, TARGETS, 1) == 0.25
    assert recall_at_k(RANKED, TARGETS, 3) == 0.5
    assert recall_at_k(RANKED, TARGETS, 5) == 0.5
    assert recall_at_k(RANKED, TARGETS, 10) == 0.75


def test_ndcg_single_target():
    # rank 2 (third place) -> 1 / log2(4) = 0.5
    assert ndcg_at_k([[1, 2, 3]], [3], 10) == pytest.approx(0.5)
    assert ndcg_at_k([[3, 2, 1]], [3], 10) == pytest.approx(1.0)
    assert ndcg_at_k([[1, 2, 3]], [3], 2) == 0.0
    want = (1.0 + 0.5 + 0.0 + 1 / math.log2(8)) / 4
    assert ndcg_at_k(RANKED, TARGETS, 10) == pytest.approx(want)
    assert ndcg_at_k(RANKED, TARGETS, 5) == pytest.approx((1.0 + 0.5) / 4)


def test_mrr_with_and_without_cutoff():
    assert mrr(RANKED, TARGETS) == pytest.approx((1 + 1 / 3 + 0 + 1 / 7) / 4)
    assert mrr(RANKED, TARGETS, k=5) == pytest.approx((1 + 1 / 3) / 4)


def test_short_lists_none_and_duplicates():
    # a short list only has fewer chances; None takes a slot but never matches
    assert recall_at_k([[], [None, 4]], [4, 4], 5) == 0.5
    assert ndcg_at_k([[None, 4]], [4], 5) == pytest.approx(1 / math.log2(3))
    # a duplicate of the target counts once, at its first position
    assert mrr([[1, 4, 4]], [4]) == pytest.approx(0.5)
    # a negative target never matches the -1 filler
    assert recall_at_k([[None]], [-1], 5) == 0.0


def test_invalid_rate():
    assert invalid_rate([[0, 1, None], [-1, 5]], n_items=5) == pytest.approx(3 / 5)
    assert invalid_rate([[0, 1, None], [-1, 5]]) == pytest.approx(2 / 5)  # without n_items, 5 is fine
    assert invalid_rate([[], []], n_items=5) == 0.0


def test_coverage():
    ranked = [[0, 1, 2], [0, 3, None], [4, -1, 99]]
    assert coverage(ranked, n_items=10, k=2) == pytest.approx(4 / 10)  # {0, 1, 3, 4}
    assert coverage(ranked, n_items=10, k=3) == pytest.approx(5 / 10)  # + 2; 99 is no item


def test_evaluate_rankings_keys_and_values():
    res = evaluate_rankings(RANKED, TARGETS, n_items=20)
    assert set(res) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr", "invalid_rate", "coverage@10", "users"}
    assert res["recall@5"] == 0.5 and res["recall@10"] == 0.75
    assert res["ndcg@10"] == pytest.approx((1.0 + 0.5 + 1 / 3) / 4)
    assert res["invalid_rate"] == 0.0 and res["users"] == 4
    assert res["coverage@10"] == pytest.approx(len({i for r in RANKED for i in r}) / 20)
    assert evaluate_rankings([], [], n_items=3)["recall@10"] == 0.0
    with pytest.raises(ValueError):
        evaluate_rankings([[1]], [1, 2], n_items=3)


def test_matches_a_loop_on_random_rankings():
    rng = np.random.default_rng(0)
    ranked = [rng.choice(50, size=rng.integers(0, 12), replace=False).tolist() for _ in range(200)]
    targets = rng.integers(0, 50, size=200).tolist()
    for k in (1, 5, 10):
        rec = ndcg = 0.0
        for row, t in zip(ranked, targets):
            if t in row[:k]:
                rec += 1
                ndcg += 1 / math.log2(row.index(t) + 2)
        assert recall_at_k(ranked, targets, k) == pytest.approx(rec / 200)
        assert ndcg_at_k(ranked, targets, k) == pytest.approx(ndcg / 200)
