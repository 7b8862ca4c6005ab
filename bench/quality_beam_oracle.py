"""How much a beam search over a run's semantic IDs would lose if the model were SASRec.

    .venv/bin/python bench/quality_beam_oracle.py SASREC_FOLDER RUN [RUN ...] \
        [--users 2000 --seed 0 --beams 20 --split valid]

SASREC_FOLDER is a saved SASRec (RUN/tokenize/collab_sasrec, or RUN/baselines/sasrec) trained on
the same prepared data as the RUNs. For the users of a split (the fixed sample of `genrec evaluate
--max-users N --seed S`), SASRec's item softmax is summed under each ID prefix
and a beam of B prefixes is kept per level, as the constrained decoder keeps B beams; the survivors
are ranked by their SASRec score. If hit@10 after that search equals SASRec's own flat hit@10, the
ID hierarchy and the beam width cost nothing, and whatever genrec loses against SASRec is lost in
the model's estimate of the next item. The last column is the share of users whose target shares
its first 1..depth codes with any of the top-10, as `bench/quality_prefix.py` prints it for a
trained run's test recommendations (`--split test` for the same users): where the two part, the
model falls behind the teacher.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from genrec.data import PreparedDataset
from genrec.models.sasrec import SASRecRecommender
from genrec.tokenization.catalog import Catalog


def beam_survival(probs: np.ndarray, codes: np.ndarray, target: int, beams: int) -> tuple[list[bool], bool, list[bool]]:
    """(target still in the beam after each level, target in the final top-10, target's first 1..depth
    codes among the top-10's) for one user."""
    alive = np.arange(len(probs))
    kept = []
    for level in range(codes.shape[1]):
        _, group = np.unique(codes[alive, : level + 1], axis=0, return_inverse=True)
        group = group.ravel()
        mass = np.bincount(group, weights=probs[alive])
        alive = alive[np.isin(group, np.argsort(-mass)[:beams])]
        kept.append(bool(target in alive))
    top10 = alive[np.argsort(-probs[alive])[:10]]
    shared = [
        bool((codes[top10, : level + 1] == codes[target, : level + 1]).all(1).any()) for level in range(codes.shape[1])
    ]
    return kept, bool(target in top10), shared


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("sasrec", help="a saved SASRec folder (RUN/tokenize/collab_sasrec or RUN/baselines/sasrec)")
    p.add_argument("runs", nargs="+", help="run folders whose semantic IDs (RUN/tokenize) to test")
    p.add_argument("--users", type=int, default=2000, help="users of the split, sampled with --seed (0: all)")
    p.add_argument("--seed", type=int, default=0, help="user-sample seed (as `genrec evaluate --seed`)")
    p.add_argument("--beams", type=int, default=20, help="beam width (prefixes kept per level)")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sas = SASRecRecommender.load(args.sasrec)
    data = PreparedDataset.load(f"{args.runs[0]}/data")
    _, histories, targets = data.split_rows(args.split, args.users, args.seed)
    probs = torch.softmax(sas.scores(histories), -1).numpy()
    T = np.asarray(targets)
    flat = float((np.argsort(-probs, 1)[:, :10] == T[:, None]).any(1).mean())
    print(
        "| ID hierarchy | beam | target kept after level 1..depth | hit@10 after the search | SASRec flat hit@10 "
        "| target's first 1..depth codes in the top-10 |"
    )
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        codes = np.asarray(Catalog.load(f"{run}/tokenize").codes)
        kept, hits, shared = zip(*(beam_survival(probs[u], codes, int(T[u]), args.beams) for u in range(len(T))))
        per_level, prefix = np.mean(np.asarray(kept), axis=0), np.mean(np.asarray(shared), axis=0)
        print(
            f"| {run} | {args.beams} | {' / '.join(f'{x:.3f}' for x in per_level)} | {np.mean(hits):.4f} "
            f"| {flat:.4f} "
            f"| {' / '.join(f'{x:.3f}' for x in prefix)} |"
        )


if __name__ == "__main__":
    main()
