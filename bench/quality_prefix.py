"""Where a trained run loses the target: how much of the target's semantic ID its top items share.

    .venv/bin/python bench/quality_prefix.py RUN [--recommendations FILE]

Reads the test recommendations that the last `genrec evaluate RUN` wrote
(RUN/eval/test_recommendations.jsonl), RUN/data and RUN/tokenize, and prints, for each ID level L,
the share of users whose top-1 and whose top-10 hold an item with the target's first L codes
(at the full depth, the top-10 share is Recall@10), the mean number of distinct first codes in a
top-10, and the share of recommended slots that are items of the user's own history. A large drop
from level L to L+1 says the model finds the right region of the catalog but not the item.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from genrec.data import PreparedDataset
from genrec.tokenization.catalog import Catalog, parse_sid


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="run folder evaluated by `genrec evaluate RUN`")
    p.add_argument(
        "--recommendations",
        type=Path,
        default=None,
        help="JSONL of {user_id, items: [{item_id, sid}, ...]} (default: RUN/eval/test_recommendations.jsonl)",
    )
    args = p.parse_args(argv)
    data = PreparedDataset.load(args.run / "data")
    catalog = Catalog.load(args.run / "tokenize")
    path = args.recommendations or args.run / "eval" / "test_recommendations.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"no recommendations in {path}")
    split = {u: (set(h), t) for u, h, t in data.split("test")}
    target_codes = {r["user_id"]: parse_sid(catalog.sid_of(split[r["user_id"]][1])) for r in rows}
    n = len(rows)
    for level in range(1, catalog.depth + 1):

        def shares(item: dict, user: str) -> bool:
            return parse_sid(item["sid"])[:level] == target_codes[user][:level]

        top1 = sum(bool(r["items"]) and shares(r["items"][0], r["user_id"]) for r in rows) / n
        top10 = sum(any(shares(it, r["user_id"]) for it in r["items"][:10]) for r in rows) / n
        print(f"first {level} code(s) of the target: top-1 {top1:.3f}, any of the top-10 {top10:.3f}")
    print(
        "mean distinct first codes in a top-10:",
        round(statistics.mean(len({parse_sid(it["sid"])[0] for it in r["items"][:10]}) for r in rows), 2),
    )
    print("targets already in the history:", round(sum(t in h for h, t in split.values()) / len(split), 4))
    slots = sum(len(r["items"][:10]) for r in rows)
    seen = sum(it["item_id"] in split[r["user_id"]][0] for r in rows for it in r["items"][:10])
    print("share of top-10 slots that are history items:", round(seen / max(slots, 1), 4))


if __name__ == "__main__":
    main()
