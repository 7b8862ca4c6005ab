"""Decoding every test user: the ID-token softmax (default) against the full-vocabulary softmax.

    python bench/decode_speed.py run RUN [--users 0] [--compare 2000] [--batch-size 16] [--threads 1]
    python bench/decode_speed.py order RUN [--users 1000] [--rounds 2] [--batch-size 16] [--threads 1]
    python bench/decode_speed.py docs

Loads RUN/model and decodes the test users of RUN/data (all of them with ``--users 0``) with
`constrained_beam_search` at the run's beam width with the ID-token softmax, and the first
``--compare`` of them again with the full-vocabulary softmax, in one process, seen items kept.
It reports users per second of each, the minutes for every test user, Recall/NDCG@10 of both
on the compared users and how often both return the same top-10 list. Rows go to
bench/results/decode_speed.json with the command, CPU and commit; ``docs`` writes the table
into docs/benchmarks.md.

``order`` times the batching of users: the first ``--users`` test users decoded in batches of
users in the order given (as `run` does) against `GenerativeRecommender.recommend`, which
decodes them sorted by prompt length (a batch is left-padded to its longest prompt). The two
alternate for ``--rounds`` rounds in one process, so machine load falls on both; the row (in
bench/results/decode_order.json) also says how often both return the same top-10 list.
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
RESULTS = ROOT / "bench" / "results" / "decode_speed.json"
ORDER_RESULTS = ROOT / "bench" / "results" / "decode_order.json"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- decode_speed:begin (bench/decode_speed.py docs) -->", "<!-- decode_speed:end -->"
ORDER_BEGIN, ORDER_END = "<!-- decode_order:begin (bench/decode_speed.py docs) -->", "<!-- decode_order:end -->"
MODES = ("ids", "vocabulary")


def _load(folder: Path, users: int, threads: int):
    """RUN/model as a recommender, its beam width, and the first ``users`` test users of
    RUN/data (all with 0): histories, targets and their prompts."""
    import torch

    from genrec.data import PreparedDataset
    from genrec.decoding.hf import GenerativeRecommender
    from genrec.exported import read_settings

    torch.set_num_threads(threads)
    rec = GenerativeRecommender.from_folder(folder / "model")
    beams = int(read_settings(folder / "model").get("num_beams") or 20)
    _, histories, targets = PreparedDataset.load(folder / "data").split_rows("test", users, 0)
    return rec, beams, histories, targets, [rec.formatter.next_item_prompt(h) for h in histories]


def _save(path: Path, row: dict) -> None:
    """``row`` into the results file ``path``, replacing an earlier row of the same run; docs redone."""
    old = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps([r for r in old if r["run"] != row["run"]] + [row], indent=2) + "\n")
    docs()


def run(folder: Path, users: int, compare: int, batch_size: int, threads: int) -> None:
    from tqdm.auto import tqdm

    from genrec.decoding.beam_search import constrained_beam_search, left_pad
    from genrec.metrics import evaluate_rankings

    rec, beams, _, targets, prompts = _load(folder, users, threads)
    out: dict[str, dict] = {}
    ranked: dict[str, list] = {}
    compare = min(compare or len(prompts), len(prompts))
    for mode in MODES:
        n = len(prompts) if mode == "ids" else compare
        t0, rows = time.perf_counter(), []
        for start in tqdm(range(0, n, batch_size), desc=mode, unit="batch"):
            ids, mask = left_pad(prompts[start : min(n, start + batch_size)], rec.pad_id)
            rows += constrained_beam_search(rec.model, ids, mask, rec.trie, beams, 10, softmax=mode)
        seconds = time.perf_counter() - t0
        ranked[mode] = [[i for i, _ in r] for r in rows]
        every = evaluate_rankings(ranked[mode], targets[:n], len(rec.catalog), ks=(10,))
        same = evaluate_rankings(ranked[mode][:compare], targets[:compare], len(rec.catalog), ks=(10,))
        out[mode] = {
            "users": n,
            "users_per_s": round(n / seconds, 2),
            "minutes": round(seconds / 60, 2),
            "ndcg@10": round(every["ndcg@10"], 4),
            "recall@10": round(every["recall@10"], 4),
            "compared_ndcg@10": round(same["ndcg@10"], 4),
            "compared_recall@10": round(same["recall@10"], 4),
        }
        print(mode, out[mode])
    a, b = ranked["ids"][:compare], ranked["vocabulary"]
    row = {
        "run": str(folder),
        "data": json.loads((folder / "data" / "dataset.json").read_text())["source"].get("format"),
        "users": len(prompts),
        "compared_users": compare,
        "items": len(rec.catalog),
        "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1),
        "num_beams": beams,
        "batch_size": batch_size,
        "threads": threads,
        "model_parameters": sum(p.numel() for p in rec.model.parameters()),
        "vocabulary": rec.model.config.vocab_size,
        **out,
        "speedup": round(out["ids"]["users_per_s"] / out["vocabulary"]["users_per_s"], 2),
        "identical_top10": round(sum(x == y for x, y in zip(a, b)) / len(a), 4),
        "same_top10_set": round(sum(set(x) == set(y) for x, y in zip(a, b)) / len(a), 4),
        "measured": time.strftime("%Y-%m-%d"),
        **_record(),
    }
    _save(RESULTS, row)


def order(folder: Path, users: int, rounds: int, batch_size: int, threads: int) -> None:
    from tqdm.auto import tqdm

    from genrec.decoding.beam_search import constrained_beam_search, left_pad

    rec, beams, histories, _, prompts = _load(folder, users, threads)

    def given_order() -> list[list[int]]:
        rows = []
        for start in tqdm(range(0, len(prompts), batch_size), desc="users in given order", unit="batch"):
            ids, mask = left_pad(prompts[start : start + batch_size], rec.pad_id)
            rows += constrained_beam_search(rec.model, ids, mask, rec.trie, beams, 10)
        return [[i for i, _ in r] for r in rows]

    def sorted_by_length() -> list[list[int]]:
        ranked = rec.recommend(histories, k=10, num_beams=beams, batch_size=batch_size, progress=True)
        return [[r.index for r in user] for user in ranked]

    seconds: dict[str, list[float]] = {"given": [], "sorted": []}
    lists: dict[str, list[list[int]]] = {}
    for _ in range(rounds):
        for name, decode in (("given", given_order), ("sorted", sorted_by_length)):
            t0 = time.perf_counter()
            lists[name] = decode()
            seconds[name].append(time.perf_counter() - t0)

    def padding(batches: list[list[int]]) -> float:
        width = sum(max(len(prompts[u]) for u in b) * len(b) for b in batches)
        return round(1 - sum(len(prompts[u]) for b in batches for u in b) / width, 3)

    given = list(range(len(prompts)))
    by_length = sorted(given, key=lambda u: len(prompts[u]))
    cut = lambda us: [us[i : i + batch_size] for i in range(0, len(us), batch_size)]  # noqa: E731
    row = {
        "run": str(folder),
        "users": len(prompts),
        "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
        "num_beams": beams,
        "batch_size": batch_size,
        "threads": threads,
        "rounds": rounds,
        "seconds_given_order": [round(x, 1) for x in seconds["given"]],
        "seconds_sorted": [round(x, 1) for x in seconds["sorted"]],
        "speedup": round(sum(seconds["given"]) / sum(seconds["sorted"]), 2),
        "padding_given_order": padding(cut(given)),
        "padding_sorted": padding(cut(by_length)),
        "identical_top10": round(sum(a == b for a, b in zip(lists["given"], lists["sorted"])) / len(prompts), 4),
        "measured": time.strftime("%Y-%m-%d"),
        **_record(),
    }
    print(row)
    _save(ORDER_RESULTS, row)


def _order_docs() -> list[str]:
    lines = [
        ORDER_BEGIN,
        "",
        "| run | users | prompt tokens | batch | padding, given order / sorted | seconds, given order | "
        "seconds, sorted | speed-up | same top-10 list | CPU, threads |",
        "|---|---:|---|---:|---|---|---|---:|---:|---|",
    ]
    for r in json.loads(ORDER_RESULTS.read_text()) if ORDER_RESULTS.is_file() else []:
        lo, hi = r["prompt_tokens"]
        lines.append(
            f"| `{r['run']}` | {r['users']:,} | {lo}-{hi} | {r['batch_size']} | "
            f"{r['padding_given_order']:.0%} / {r['padding_sorted']:.0%} | "
            f"{', '.join(map(str, r['seconds_given_order']))} | {', '.join(map(str, r['seconds_sorted']))} | "
            f"{r['speedup']:.1f}x | {r['identical_top10']:.0%} | {r['cpu']}, {r['threads']} |"
        )
    return lines + ["", f"Commands and commits: `{ORDER_RESULTS.relative_to(ROOT)}`.", "", ORDER_END]


def docs() -> None:
    rows = json.loads(RESULTS.read_text())
    lines = [
        BEGIN,
        "",
        "| run | test users | items | prompt tokens | users/s, ID softmax | users/s, vocabulary softmax | speed-up | "
        "minutes for every test user (ID softmax) | compared users | NDCG@10 ID / vocabulary | same top-10 list "
        "| CPU, threads |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        ids, voc = r["ids"], r["vocabulary"]
        lines.append(
            f"| `{r['run']}` | {r['users']:,} | {r['items']:,} | {r['prompt_tokens_mean']:.0f} | "
            f"{ids['users_per_s']:.1f} | {voc['users_per_s']:.1f} | {r['speedup']:.1f}x | {ids['minutes']:.1f} | "
            f"{r['compared_users']:,} | {ids['compared_ndcg@10']:.4f} / {voc['compared_ndcg@10']:.4f} | "
            f"{r['identical_top10']:.0%} | {r['cpu']}, {r['threads']} |"
        )
    lines += ["", f"Commands and commits: `{RESULTS.relative_to(ROOT)}`.", "", END]
    write_section(lines, DOCS)
    if ORDER_BEGIN in DOCS.read_text():
        write_section(_order_docs(), DOCS)
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("run")
    a.add_argument("run", type=Path)
    a.add_argument("--users", type=int, default=0, help="test users (0: all)")
    a.add_argument("--compare", type=int, default=2000, help="users also decoded with the vocabulary softmax")
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument("--threads", type=int, default=1)
    a = sub.add_parser("order")
    a.add_argument("run", type=Path)
    a.add_argument("--users", type=int, default=1000, help="test users (0: all)")
    a.add_argument("--rounds", type=int, default=2, help="alternating rounds of both orders")
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument("--threads", type=int, default=1)
    sub.add_parser("docs")
    args = ap.parse_args()
    if args.what == "run":
        run(args.run, args.users, args.compare, args.batch_size, args.threads)
    elif args.what == "order":
        order(args.run, args.users, args.rounds, args.batch_size, args.threads)
    else:
        docs()


if __name__ == "__main__":
    main()
