"""Why does excluding seen items lift SASRec more than genrec? Both models, both ways, one run.

    python bench/exclusion_lift.py run RUN [--users 0] [--reuse-eval]
    python bench/exclusion_lift.py docs

On RUN's test users (all with ``--users 0``), for genrec (RUN/model, beam 20) and for the SASRec-CE
of the same run (RUN/tokenize/collab_sasrec, else RUN/baselines/sasrec), it measures NDCG@10 and
Recall@10 with seen items kept, with seen items excluded inside the ranking (the trie walk for
genrec: what `genrec evaluate --exclude-seen` does), and with seen items dropped after ranking
(beam 40, then the best 10 unseen). It also counts how many of each model's kept top-10 are
items the user already has, and how often the test target is one (a repeat). If the lift is
what the seen items in the kept lists free up, the lift follows that count; if excluding
inside the trie walk loses good items, post-filtering beats it. ``--reuse-eval`` (all users only)
takes genrec's two lists from the run's own `genrec evaluate` outputs
(RUN/eval/test*_recommendations.jsonl) instead of decoding again, and leaves the post-filtered
column out: a large dataset is then measured in minutes. Rows go to
bench/results/exclusion_lift.json; ``docs`` writes the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cold_start import write_section  # noqa: E402
from serving import _record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "exclusion_lift.json"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- exclusion_lift:begin (bench/exclusion_lift.py docs) -->", "<!-- exclusion_lift:end -->"


def _scores(lists, histories, targets, n_items) -> dict:
    from genrec.metrics import evaluate_rankings

    m = evaluate_rankings(lists, targets, n_items, ks=(10,))
    seen = sum(len(set(lst[:10]) & set(h)) for lst, h in zip(lists, histories)) / len(lists)
    return {"ndcg@10": round(m["ndcg@10"], 4), "recall@10": round(m["recall@10"], 4), "seen_in_top10": round(seen, 2)}


def _lists_by_user(path: Path, item_index: dict[str, int]) -> dict[str, list[int]]:
    """Each user's top-10 catalog rows from a `genrec evaluate` recommendations file."""
    with open(path) as f:
        return {r["user_id"]: [item_index[i["item_id"]] for i in r["items"]] for r in map(json.loads, f)}


def _eval_lists(folder: Path, name: str, user_ids: list[str], item_index: dict[str, int]) -> list[list[int]]:
    """The top-10 lists `genrec evaluate` wrote for ``name`` (test or test_xseen), in ``user_ids``' order."""
    path = folder / "eval" / f"{name}_recommendations.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `genrec evaluate {folder}` first, or drop --reuse-eval")
    by_user = _lists_by_user(path, item_index)
    missing = [u for u in user_ids if u not in by_user]
    if missing:
        raise SystemExit(f"{path} lacks {len(missing)} test users (it was made on a sample?): drop --reuse-eval")
    return [by_user[u] for u in user_ids]


def run(folder: Path, users: int, reuse_eval: bool = False) -> None:
    import torch

    from genrec.data import PreparedDataset
    from genrec.decoding.hf import GenerativeRecommender
    from genrec.models.sasrec import SASRecRecommender

    torch.set_num_threads(1)
    if reuse_eval and users:
        raise SystemExit("--reuse-eval needs every test user (--users 0): the evaluation covered all of them")
    data = PreparedDataset.load(folder / "data")
    user_ids, histories, targets = data.split_rows("test", users, 0)
    genrec = GenerativeRecommender.from_folder(folder / "model")
    teacher = next(p for p in (folder / "tokenize" / "collab_sasrec", folder / "baselines" / "sasrec") if p.is_dir())
    sasrec = SASRecRecommender.load(teacher)
    n = len(genrec.catalog)

    def idx(recs):
        return [[r.index for r in row] for row in recs]

    def unseen(lists, k=10):
        return [[i for i in lst if i not in set(h)][:k] for lst, h in zip(lists, histories)]

    out = {}
    for name, rec, kw, wide in (
        ("genrec", genrec, {"num_beams": 20, "batch_size": 16}, {"num_beams": 40, "batch_size": 16}),
        ("sasrec", sasrec, {}, {}),
    ):
        if name == "genrec" and reuse_eval:
            index = data.item_index()
            kept, inside, after = (*(_eval_lists(folder, f, user_ids, index) for f in ("test", "test_xseen")), None)
        else:
            kept = idx(rec.recommend(histories, k=10, **kw))
            inside = idx(rec.recommend(histories, k=10, exclude=histories, **kw))
            after = unseen(idx(rec.recommend(histories, k=40, **wide)))
        out[name] = {
            "kept": _scores(kept, histories, targets, n),
            "excluded_inside": _scores(inside, histories, targets, n),
            "excluded_after_40": _scores(after, histories, targets, n) if after is not None else None,
        }
        k, x = out[name]["kept"]["ndcg@10"], out[name]["excluded_inside"]["ndcg@10"]
        out[name]["lift"] = round(x / k - 1, 4) if k else None
        print(name, out[name])
    row = {
        "run": str(folder),
        "data": json.loads((folder / "data" / "dataset.json").read_text())["source"].get("format"),
        "users": len(histories),
        "repeat_targets": round(sum(t in set(h) for h, t in zip(histories, targets)) / len(targets), 4),
        **out,
        "measured": time.strftime("%Y-%m-%d"),
        **_record(),
    }
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([r for r in old if r["run"] != row["run"]] + [row], indent=2) + "\n")
    docs()


def docs() -> None:
    rows = json.loads(RESULTS.read_text())
    lines = [
        BEGIN,
        "",
        "| run | users | targets already seen | model | seen items in the kept top-10 | NDCG@10 kept | "
        "excluded inside the ranking | excluded after (top-40, then 10) | lift of excluding |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for model in ("sasrec", "genrec"):
            m = r[model]
            after = f"{m['excluded_after_40']['ndcg@10']:.4f}" if m["excluded_after_40"] else "-"
            lines.append(
                f"| `{r['run']}` | {r['users']:,} | {r['repeat_targets']:.1%} | {model} | "
                f"{m['kept']['seen_in_top10']:.2f} | {m['kept']['ndcg@10']:.4f} | "
                f"{m['excluded_inside']['ndcg@10']:.4f} | {after} | {m['lift']:+.0%} |"
            )
    lines += ["", f"Commands, CPU and commits: `{RESULTS.relative_to(ROOT)}`.", "", END]
    write_section(lines, DOCS)
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("run")
    a.add_argument("run", type=Path)
    a.add_argument("--users", type=int, default=0)
    a.add_argument("--reuse-eval", action="store_true", help="genrec's lists from RUN/eval (all users)")
    sub.add_parser("docs")
    args = ap.parse_args()
    if args.what == "run":
        run(args.run, args.users, args.reuse_eval)
    else:
        docs()


if __name__ == "__main__":
    main()
