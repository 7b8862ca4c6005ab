"""Where does genrec lose to the SASRec-CE that taught it? One run, every test user, seen items excluded.

    python bench/gap_breakdown.py run RUN
    python bench/gap_breakdown.py docs

genrec's top-10 lists come from RUN's own evaluation (RUN/eval/test_xseen_recommendations.jsonl,
`genrec evaluate RUN --exclude-seen`); the teacher (RUN/tokenize/collab_sasrec) ranks the same
users with the same exclusion. Users are split by how often their test item occurs in the
training sequences (rare to head) and by how many items their history holds, and each group's
NDCG@10 is given for both models: if genrec loses mostly on rare targets, its IDs cannot tell
rare items apart (their codes are shared with popular ones); if it loses evenly, the student's
ranking is uniformly blunter than its teacher's. It also measures how closely the student copies
the teacher (shared items in the two top-10s) and how popular the items each recommends are.
Rows go to bench/results/gap_breakdown.json; ``docs`` writes the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cold_start import write_section  # noqa: E402
from exclusion_lift import _eval_lists  # noqa: E402
from serving import _record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gap_breakdown.json"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- gap_breakdown:begin (bench/gap_breakdown.py docs) -->", "<!-- gap_breakdown:end -->"
#: training occurrences of the test item: the groups' lower bounds
TARGET_COUNTS = (0, 6, 21, 101)
#: items in the history: the groups' lower bounds
HISTORY_LENGTHS = (0, 5, 8, 13)


def _gains(lists: list[list[int]], targets: list[int]) -> np.ndarray:
    """Each user's NDCG@10 (one relevant item: 1 / log2(rank + 2) when it is in the top 10)."""
    out = np.zeros(len(targets))
    for u, (lst, t) in enumerate(zip(lists, targets)):
        if t in lst[:10]:
            out[u] = 1 / math.log2(lst.index(t) + 2)
    return out


def _groups(values: np.ndarray, bounds: tuple[int, ...], unit: str) -> list[tuple[str, np.ndarray]]:
    edges = [*bounds[1:], None]
    return [
        (f"{lo}-{hi - 1} {unit}" if hi else f"{lo}+ {unit}", (values >= lo) & (values < hi if hi else True))
        for lo, hi in zip(bounds, edges)
    ]


def run(folder: Path) -> None:
    import torch

    from genrec.data import PreparedDataset
    from genrec.models.sasrec import SASRecRecommender

    torch.set_num_threads(1)
    data = PreparedDataset.load(folder / "data")
    user_ids, histories, targets = data.split_rows("test")
    genrec = _eval_lists(folder, "test_xseen", user_ids, data.item_index())
    teacher = SASRecRecommender.load(folder / "tokenize" / "collab_sasrec")
    sasrec = [[r.index for r in row] for row in teacher.recommend(histories, k=10, exclude=histories)]
    counts = Counter(i for seq in data.train_rows() for i in seq)
    g, s = _gains(genrec, targets), _gains(sasrec, targets)
    groups = [
        *_groups(np.array([counts[t] for t in targets]), TARGET_COUNTS, "training occurrences"),
        *_groups(np.array([len(h) for h in histories]), HISTORY_LENGTHS, "history items"),
    ]
    rows = [
        {
            "group": name,
            "users": int(mask.sum()),
            "genrec_ndcg@10": round(float(g[mask].mean()), 4),
            "sasrec_ndcg@10": round(float(s[mask].mean()), 4),
            "share_of_gap": round(float((s[mask] - g[mask]).sum() / max(1e-12, (s - g).sum())), 3),
        }
        for name, mask in [("every user", np.ones(len(targets), dtype=bool)), *groups]
    ]

    def median_count(lists: list[list[int]]) -> float:
        return float(np.median([counts[i] for lst in lists for i in lst[:10]]))

    row = {
        "run": str(folder),
        "protocol": "seen items excluded",
        "users": len(targets),
        "groups": rows,
        "shared_in_top10": round(sum(len(set(a[:10]) & set(b[:10])) for a, b in zip(genrec, sasrec)) / len(targets), 2),
        "median_training_count_recommended": {"genrec": median_count(genrec), "sasrec": median_count(sasrec)},
        "hit_by_one_only": {
            "genrec": int(((g > 0) & (s == 0)).sum()),
            "sasrec": int(((s > 0) & (g == 0)).sum()),
        },
        "measured": time.strftime("%Y-%m-%d"),
        **_record(),
    }
    for r in rows:
        print(r)
    print({k: v for k, v in row.items() if k != "groups"})
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([r for r in old if r["run"] != row["run"]] + [row], indent=2) + "\n")
    docs()


def docs() -> None:
    lines = [BEGIN, ""]
    for r in json.loads(RESULTS.read_text()):
        med = r["median_training_count_recommended"]
        lines += [
            f"`{r['run']}`, {r['users']:,} test users, {r['protocol']}: the two top-10s share "
            f"{r['shared_in_top10']} items on average; the median recommended item occurs "
            f"{med['genrec']:g} times in training for genrec and {med['sasrec']:g} for SASRec-CE; "
            f"{r['hit_by_one_only']['sasrec']:,} users are hit by SASRec-CE only, "
            f"{r['hit_by_one_only']['genrec']:,} by genrec only.",
            "",
            "| users by | users | genrec NDCG@10 | SASRec-CE NDCG@10 | genrec / SASRec | share of the gap |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for x in r["groups"]:
            ratio = x["genrec_ndcg@10"] / x["sasrec_ndcg@10"] if x["sasrec_ndcg@10"] else float("nan")
            lines.append(
                f"| {x['group']} | {x['users']:,} | {x['genrec_ndcg@10']:.4f} | {x['sasrec_ndcg@10']:.4f} | "
                f"{ratio:.0%} | {x['share_of_gap']:.0%} |"
            )
        lines.append("")
    lines += [f"Commands, CPU and commits: `{RESULTS.relative_to(ROOT)}`.", "", END]
    write_section(lines, DOCS)
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("run").add_argument("run", type=Path)
    sub.add_parser("docs")
    args = ap.parse_args()
    if args.what == "run":
        run(args.run)
    else:
        docs()


if __name__ == "__main__":
    main()
