"""SASRec-CE: our defaults against RecBole's block (2 heads, FFN 256, dropout 0.5), seeds, all users.

    python bench/sasrec_variants.py run RUN [--seeds 0 1 2] [--variants default recbole recbole_dropout02]
    python bench/sasrec_variants.py docs

For each variant and seed, fits SASRec with full-softmax cross-entropy on RUN/data (early stopping
on validation NDCG@10, the `sasrec` section's defaults otherwise, one thread) and scores every
test user under both protocols. Rows (best epoch, training minutes, metrics) go to
bench/results/sasrec_variants.json with the command, CPU and commit; ``docs`` writes the table of
means and standard deviations into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cold_start import write_section  # noqa: E402
from serving import _record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "sasrec_variants.json"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- sasrec_variants:begin (bench/sasrec_variants.py docs) -->", "<!-- sasrec_variants:end -->"
VARIANTS = {
    "default": {},
    "recbole": {"heads": 2, "ffn": 256, "dropout": 0.5},
    "recbole_dropout02": {"heads": 2, "ffn": 256},
}


def run(folder: Path, seeds: list[int], variants: list[str]) -> None:
    from genrec.config import SASRecConfig
    from genrec.data import PreparedDataset
    from genrec.evaluation.evaluator import Evaluator
    from genrec.models.sasrec import SASRecRecommender

    dataset = PreparedDataset.load(folder / "data")
    evaluators = {x: Evaluator(dataset, "test", 0, 0, x) for x in (False, True)}
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    for variant in variants:
        for seed in seeds:
            cfg = dataclasses.replace(SASRecConfig(), seed=seed, num_threads=1, **VARIANTS[variant])
            rec = SASRecRecommender(cfg).fit(dataset, progress=False)
            row = {
                "run": str(folder),
                "variant": variant,
                "settings": VARIANTS[variant],
                "seed": seed,
                "best_epoch": rec.best_epoch,
                "train_minutes": round(rec.train_seconds / 60, 2),
                **{
                    ("excluded" if x else "kept"): {
                        k: round(v, 4)
                        for k, v in ev.evaluate(rec).metrics.items()
                        if k in ("recall@10", "ndcg@10", "users")
                    }
                    for x, ev in evaluators.items()
                },
                "measured": time.strftime("%Y-%m-%d"),
                **_record(),
            }
            print(json.dumps(row))
            old = [r for r in old if (r["run"], r["variant"], r["seed"]) != (row["run"], variant, seed)] + [row]
            RESULTS.write_text(json.dumps(old, indent=2) + "\n")
    docs()


def _ms(values: list[float]) -> str:
    sd = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{sd}"


def docs() -> None:
    rows = json.loads(RESULTS.read_text())
    lines = [
        BEGIN,
        "",
        "| run | variant | seeds | users | NDCG@10 kept | NDCG@10 excluded | Recall@10 excluded | best epoch | "
        "train min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run, variant in dict.fromkeys((r["run"], r["variant"]) for r in rows):
        part = [r for r in rows if (r["run"], r["variant"]) == (run, variant)]
        lines.append(
            f"| `{run}` | {variant} {part[0]['settings'] or ''} | {len(part)} | {part[0]['kept']['users']:,} | "
            f"{_ms([r['kept']['ndcg@10'] for r in part])} | {_ms([r['excluded']['ndcg@10'] for r in part])} | "
            f"{_ms([r['excluded']['recall@10'] for r in part])} | "
            f"{statistics.mean(r['best_epoch'] for r in part):.0f} | "
            f"{statistics.mean(r['train_minutes'] for r in part):.1f} |"
        )
    lines += ["", f"Commands, CPU and commits: `{RESULTS.relative_to(ROOT)}`.", "", END]
    write_section(lines, DOCS)
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("run")
    a.add_argument("run", type=Path)
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    sub.add_parser("docs")
    args = ap.parse_args()
    if args.what == "run":
        run(args.run, args.seeds, args.variants)
    else:
        docs()


if __name__ == "__main__":
    main()
