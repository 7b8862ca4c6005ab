"""Beam-width probe: one trained run, one fixed sample of test users, several beam widths.

    OMP_NUM_THREADS=1 .venv/bin/python bench/quality_beam.py RUN [--users 500] [--seed 0] [--beams 10 20 40]

Decodes the same users at each beam width with the trie-constrained beam search (HF backend,
bf16 where the CPU runs it natively) and prints one JSON line per width: users, seconds and
Recall/NDCG at 5 and 10. Writes nothing into the run folder. If NDCG@10 barely moves with the
width, the beam is not what limits the model.
"""

from __future__ import annotations

import argparse
import json
import time

from genrec.data import PreparedDataset
from genrec.decoding.hf import GenerativeRecommender
from genrec.metrics import evaluate_rankings
from genrec.precision import autocast
from genrec.recommender import ranked_indices


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("run", help="run folder with data/ and an exported model/ (after `genrec train`)")
    p.add_argument("--users", type=int, default=500, help="test users sampled (0: all)")
    p.add_argument("--seed", type=int, default=0, help="user-sample seed (as `genrec evaluate --seed`)")
    p.add_argument("--beams", type=int, nargs="+", default=[10, 20, 40], help="beam widths to try (each >= 10)")
    p.add_argument("--batch-size", type=int, default=32, help="users decoded together")
    args = p.parse_args(argv)
    data = PreparedDataset.load(f"{args.run}/data")
    model = GenerativeRecommender.from_folder(f"{args.run}/model")
    _, histories, targets = data.split_rows("test", args.users, args.seed)
    for beams in args.beams:
        t = time.perf_counter()
        with autocast(True, model.device):
            recs = model.recommend(histories, k=10, num_beams=beams, batch_size=args.batch_size)
        m = evaluate_rankings(ranked_indices(recs), targets, len(model.catalog))
        print(
            json.dumps(
                {
                    "beams": beams,
                    "users": len(histories),
                    "seconds": round(time.perf_counter() - t, 1),
                    **{k: round(v, 4) for k, v in m.items() if "@" in k and "coverage" not in k},
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
