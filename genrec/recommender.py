"""The one recommender interface: histories in, ranked items out.

Every model genrec can score implements :class:`Recommender` (the generative model on the
HF or the vLLM backend, SASRec, popularity), so one evaluator (:mod:`genrec.evaluation`),
one CLI and one benchmark harness serve them all. Items are catalog rows (the row of the
item in the prepared data's item table, which is also its catalog row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class Recommendation:
    """One recommended item.

    Attributes:
        index: the item's catalog row.
        score: the model's score (higher is better; for the generative model, the sum of the
            ID tokens' log-probabilities).
        item_id: the dataset's own id of the item ("" when the recommender does not know it).
        sid: the item's semantic ID ("" for models without one).
        title: the item's display title ("" when unknown).
    """

    index: int
    score: float
    item_id: str = ""
    sid: str = ""
    title: str = ""

    def to_dict(self) -> dict:
        return {"item_id": self.item_id, "sid": self.sid, "title": self.title, "score": round(self.score, 6)}

    @classmethod
    def rows(cls, catalog, ranked: Iterable[tuple[int, float]]) -> list["Recommendation"]:
        """One user's ranked (catalog row, score) pairs, named through ``catalog``.

        ``catalog`` is anything with ``item_ids`` and ``titles`` lists (and ``sid(row)`` for
        semantic IDs): a :class:`~genrec.tokenization.catalog.Catalog`, or None for bare rows.
        """
        if catalog is None:
            return [cls(int(i), float(s)) for i, s in ranked]
        sid = getattr(catalog, "sid", None)
        return [
            cls(int(i), float(s), str(catalog.item_ids[i]), sid(i) if sid else "", str(catalog.titles[i]))
            for i, s in ranked
        ]


@runtime_checkable
class Recommender(Protocol):
    """What every recommender offers.

    ``recommend(histories, k, exclude=..., allow=...)``: for each user, the top ``k`` items,
    best first, as :class:`Recommendation` lists.

    Args of ``recommend``:
        histories: per user, catalog rows in time order (oldest first).
        k: items per user.
        exclude: per user, rows never to return (e.g. the history itself), or None.
        allow: per user, the only rows that may be returned, or None for the whole catalog.
        progress: show a progress bar.
    """

    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int = 10,
        *,
        exclude: Sequence[Iterable[int]] | None = None,
        allow: Sequence[Iterable[int]] | None = None,
        progress: bool = False,
    ) -> list[list[Recommendation]]: ...


def ranked_indices(ranked: Sequence[Sequence[Recommendation]]) -> list[list[int]]:
    """Catalog rows of each user's recommendations (what the metrics read)."""
    return [[r.index for r in row] for row in ranked]


def top_k_by_score(
    scores,
    k: int,
    exclude: Sequence[Iterable[int]] | None = None,
    allow: Sequence[Iterable[int]] | None = None,
    catalog=None,
) -> list[list[Recommendation]]:
    """Recommendations from a (users, items) score tensor of a model that scores every item.

    Excluded rows, and rows outside a user's allow-list, get ``-inf`` and are never returned
    (a user may get fewer than ``k`` items when fewer remain).
    """
    import torch

    scores = scores.clone() if scores.is_floating_point() else scores.double()
    n_users, n_items = scores.shape
    for u in range(n_users):
        if allow is not None and allow[u] is not None:
            keep = torch.zeros(n_items, dtype=torch.bool)
            keep[torch.as_tensor(sorted(set(allow[u])), dtype=torch.long)] = True
            scores[u, ~keep] = float("-inf")
        if exclude is not None and exclude[u] is not None:
            rows = sorted(set(exclude[u]))
            if rows:
                scores[u, torch.as_tensor(rows, dtype=torch.long)] = float("-inf")
    values, idx = scores.topk(min(k, n_items), dim=1)
    out = []
    for vals, rows in zip(values.tolist(), idx.tolist()):
        out.append(Recommendation.rows(catalog, [(r, v) for r, v in zip(rows, vals) if v != float("-inf")]))
    return out
