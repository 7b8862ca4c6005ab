"""How much a beam search over a run's semantic IDs would lose if the model were SASRec.

    .venv/bin/python bench/quality_beam_oracle.py SASREC_FOLDER RUN [RUN ...] [--users 2000 --beams 20]

SASREC_FOLDER is a saved SASRec (RUN/tokenize/collab_sasrec, or RUN/baselines/sasrec) trained on
the same prepared data as the RUNs. For validation users (the fixed sample of `genrec evaluate
--max-users N --seed 0`, on the valid split), SASRec's item softmax is summed under each ID prefix
and a beam of B prefixes is kept per level, as the constrained decoder keeps B beams; the survivors
are ranked by their SASRec score. If hit@10 after that search equals SASRec's own flat hit@10, the
ID hierarchy and the beam width cost nothing, and whatever genrec loses against SASRec is lost in
the model's estimate of the next item.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from genrec.data import PreparedDataset
from genrec.evaluation.evaluate import split_rows
from genrec.evaluation.sasrec import SASRecRecommender, _left_pad
from genrec.tokenization.catalog import Catalog


def beam_survival(probs: np.ndarray, codes: np.ndarray, target: int, beams: int) -> tuple[list[bool], bool]:
    """(target still in the beam after each level, target in the final top-10) for one user."""
    alive = np.arange(len(probs))
    kept = []
    for level in range(codes.shape[1]):
        _, group = np.unique(codes[alive, :level + 1], axis=0, return_inverse=True)
        group = group.ravel()
        mass = np.bincount(group, weights=probs[alive])
        alive = alive[np.isin(group, np.argsort(-mass)[:beams])]
        kept.append(bool(target in alive))
    return kept, bool(target in alive[np.argsort(-probs[alive])[:10]])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sasrec")
    p.add_argument("runs", nargs="+")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--beams", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sas = SASRecRecommender.load(args.sasrec)
    data = PreparedDataset.load(f"{args.runs[0]}/data")
    _, histories, targets = split_rows(data, "valid", args.users, 0)
    with torch.no_grad():
        seq = _left_pad([[i + 1 for i in h] for h in histories], sas.config.max_len)
        probs = torch.softmax(sas.model.logits(sas.model(seq)[:, -1]), -1).numpy()
    T = np.asarray(targets)
    flat = float((np.argsort(-probs, 1)[:, :10] == T[:, None]).any(1).mean())
    print(f"| ID hierarchy | beam | target kept after level 1..depth | hit@10 after the search | SASRec flat hit@10 |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        codes = np.asarray(Catalog.load(f"{run}/tokenize").codes)
        kept, hits = zip(*(beam_survival(probs[u], codes, int(T[u]), args.beams) for u in range(len(T))))
        per_level = np.mean(np.asarray(kept), axis=0)
        print(f"| {run} | {args.beams} | {' / '.join(f'{x:.3f}' for x in per_level)} | {np.mean(hits):.4f} | {flat:.4f} |")


if __name__ == "__main__":
    main()
