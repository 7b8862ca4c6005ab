"""Is a variant better than the recipe, user by user? Two runs scored on the same test users.

    python bench/paired_runs.py RECIPE_RUN VARIANT_RUN

Both runs must share their prepared data and have been scored by `genrec evaluate` on the same
users (every user, or the same ``--max-users`` sample: the sample depends only on the data and
the sample seed). For each protocol whose top-10 lists both runs hold, it reports each run's
NDCG@10 and Recall@10 and the variant's paired difference with its standard error (the sd of
the per-user differences over sqrt(users)), and how many users only one of the two hits. On the
same users the paired error is far smaller than either row's own, so a difference that two
separate rows cannot resolve may be resolved here. Rows go to bench/results/paired_runs.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exclusion_lift import _lists_by_user  # noqa: E402
from gap_breakdown import _gains  # noqa: E402
from serving import _record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "paired_runs.json"
PROTOCOLS = (("test", "seen items kept"), ("test_xseen", "seen items excluded"))


def _lists(folder: Path, name: str, item_index: dict[str, int]) -> dict[str, list[int]]:
    path = folder / "eval" / f"{name}_recommendations.jsonl"
    return _lists_by_user(path, item_index) if path.is_file() else {}


def _paired(diff: np.ndarray) -> dict:
    return {"mean": round(float(diff.mean()), 5), "se": round(float(diff.std(ddof=1) / math.sqrt(len(diff))), 5)}


def run(recipe: Path, variant: Path) -> None:
    from genrec.data import PreparedDataset

    data = PreparedDataset.load(recipe / "data")
    if json.loads((variant / "data" / "stats.json").read_text()) != json.loads(
        (recipe / "data" / "stats.json").read_text()
    ):
        raise SystemExit(f"{recipe} and {variant} hold different prepared data: pair runs of one dataset")
    user_ids, _, targets = data.split_rows("test")
    target_of = dict(zip(user_ids, targets))
    index = data.item_index()
    row = {"recipe": str(recipe), "variant": str(variant), "protocols": []}
    for name, protocol in PROTOCOLS:
        a, b = _lists(recipe, name, index), _lists(variant, name, index)
        users = sorted(set(a) & set(b))
        if not users or len(users) != len(a) or len(users) != len(b):
            print(f"{protocol}: the two runs were not scored on the same users; skipped")
            continue
        t = [target_of[u] for u in users]
        ga, gb = _gains([a[u] for u in users], t), _gains([b[u] for u in users], t)
        ha, hb = (ga > 0).astype(float), (gb > 0).astype(float)  # one relevant item: a hit is recall@10
        row["protocols"].append(
            {
                "protocol": protocol,
                "users": len(users),
                "ndcg@10": {"recipe": round(float(ga.mean()), 4), "variant": round(float(gb.mean()), 4)},
                "recall@10": {"recipe": round(float(ha.mean()), 4), "variant": round(float(hb.mean()), 4)},
                "variant_minus_recipe": {"ndcg@10": _paired(gb - ga), "recall@10": _paired(hb - ha)},
                "hit_by_one_only": {
                    "recipe": int(((ha > 0) & (hb == 0)).sum()),
                    "variant": int(((hb > 0) & (ha == 0)).sum()),
                },
            }
        )
        print(row["protocols"][-1])
    if not row["protocols"]:
        raise SystemExit("no protocol was scored on the same users in both runs: run `genrec evaluate` on both")
    row.update(measured=time.strftime("%Y-%m-%d"), **_record())
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    keep = [r for r in old if (r["recipe"], r["variant"]) != (row["recipe"], row["variant"])]
    RESULTS.write_text(json.dumps(keep + [row], indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path, help="the recipe's run folder")
    ap.add_argument("variant", type=Path, help="the variant's run folder (same prepared data)")
    args = ap.parse_args()
    run(args.recipe, args.variant)


if __name__ == "__main__":
    main()
