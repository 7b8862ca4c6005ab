"""Bench-only jobs of the quality benchmark; everything else is the `genrec` CLI.

Training, evaluation and the baselines are run with the CLI, which records the split, the
protocol, the user sample and its seed, the model seed and the commit by itself:

    genrec train CONFIG
    genrec evaluate RUN --max-users 2000 --seed 0 [--exclude-seen]
    genrec baseline sasrec CONFIG -s sasrec.seed=1 --max-users 2000 --seed 0 [--exclude-seen]
    genrec baseline popularity CONFIG --max-users 2000 --seed 0 [--exclude-seen]

What this script adds:

    # start an ablation run from another run's data/ and tokenize/ (same split, same semantic IDs)
    python bench/quality_jobs.py copy-stages SRC_RUN DST_RUN
    # score an already trained SASRec folder (e.g. a teacher) on a user sample, either protocol
    python bench/quality_jobs.py sasrec-eval RUN SASREC_FOLDER --max-users 2000 --seed 0 [--exclude-seen]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from genrec.data import PreparedDataset
from genrec.evaluation.evaluator import Evaluator
from genrec.io import atomic_write_json
from genrec.models.sasrec import SASRecRecommender


def cmd_copy_stages(args: argparse.Namespace) -> None:
    """A new run folder holding another run's data/ and tokenize/ stages (not its model)."""
    src, dst = Path(args.src), Path(args.dst)
    if (dst / "tokenize").exists():
        print(f"{dst} already holds tokenize/: left as it is")
        return
    dst.mkdir(parents=True, exist_ok=True)
    for stage in ("data", "tokenize"):
        shutil.copytree(src / stage, dst / stage)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["stages"].pop("model", None)
    atomic_write_json(dst / "manifest.json", manifest)


def cmd_sasrec_eval(args: argparse.Namespace) -> None:
    """Metrics of a saved SASRec on RUN's test split, written beside the model."""
    dataset = PreparedDataset.load(Path(args.run) / "data")
    evaluator = Evaluator(dataset, "test", args.max_users, args.seed, args.exclude_seen)
    result = evaluator.evaluate(SASRecRecommender.load(args.folder))
    name = ("all" if not args.max_users else f"u{args.max_users}_s{args.seed}") + (
        "_xseen" if args.exclude_seen else ""
    )
    atomic_write_json(Path(args.folder) / f"metrics_test_{name}.json", result.to_dict())
    print(json.dumps(result.metrics, indent=2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("copy-stages", help="start a run from another run's data/ and tokenize/")
    c.add_argument("src")
    c.add_argument("dst")
    e = sub.add_parser("sasrec-eval", help="score a saved SASRec folder")
    e.add_argument("run", help="run folder whose RUN/data the SASRec was trained on")
    e.add_argument("folder", help="a trained SASRec folder (model.pt + sasrec.json)")
    e.add_argument("--max-users", type=int, default=0, help="score this many sampled users (0: all)")
    e.add_argument("--seed", type=int, default=0, help="seed of the user sample (genrec evaluate --seed)")
    e.add_argument("--exclude-seen", action="store_true", help="the seen-items-excluded protocol")
    args = p.parse_args(argv)
    {"copy-stages": cmd_copy_stages, "sasrec-eval": cmd_sasrec_eval}[args.cmd](args)


if __name__ == "__main__":
    main()
