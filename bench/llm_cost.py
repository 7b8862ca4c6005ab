"""What a training transition costs on the SmolLM2 path, beside the scratch backbone.

    python bench/llm_cost.py run RUN_PREPARED [--minutes 6]   # trains the variants, two at a time
    python bench/llm_cost.py collect                          # results file + docs table

Every variant trains `configs/demo-smollm2.yaml` on the same prepared and tokenized demo run
(RUN_PREPARED: its data/ and tokenize/ are copied) for the same wall-clock budget, one thread
each, with the learning rate annealed by time, then validates on 300 users. A *transition* is
one (history -> next item) pair the loss trains: a next-item prompt trains one; a window with
the history loss trains every item in it. Reported: transitions/s (median of the logged
intervals), validation NDCG@10 at the end of the budget, and NDCG per training minute.

Rows go to bench/results/llm_cost.json with the command of each run, the CPU and the commit;
`collect` also writes the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import _cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "llm_cost.json"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- llm_cost:begin (bench/llm_cost.py collect) -->", "<!-- llm_cost:end -->"
CONFIG = "configs/demo-smollm2.yaml"

WINDOWS = ["train.next_item_examples=windows", "train.history_loss=1.0"]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "prefixes": ("SmolLM2 LoRA, next-item prompts (the config as shipped)", []),
    "windows": ("SmolLM2 LoRA, windows + history loss", WINDOWS),
    "windows_keep10": (
        "SmolLM2 LoRA, windows + history loss, first 10 of 30 layers",
        [*WINDOWS, "model.keep_layers=10"],
    ),
    "scratch": (
        "scratch Llama 4x128, full fine-tuning, windows + history loss",
        [
            *WINDOWS,
            "model.name=scratch",
            "model.scratch_hidden=128",
            "model.scratch_layers=4",
            "model.scratch_intermediate=512",
            "train.finetune=full",
            "train.lr=0.003",
            "train.batch_size=64",
        ],
    ),
}


def _overrides(name: str, minutes: float) -> list[str]:
    common = [
        f"run_dir=runs/llm_cost/{name}",
        "train.max_steps=100000",
        f"train.max_minutes={minutes:g}",
        "train.anneal_by_time=true",
        "train.eval_users=300",
        "train.num_threads=1",
        "train.save_every=0",
        "train.log_every=10",
    ]
    return common + VARIANTS[name][1]


def command(name: str, minutes: float) -> list[str]:
    cmd = ["genrec", "train", CONFIG]
    for o in _overrides(name, minutes):
        cmd += ["-s", o]
    return cmd


def run(prepared: Path, minutes: float, names: list[str]) -> None:
    """Train the variants two at a time (one thread each: two jobs on two cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for pair in (names[i : i + 2] for i in range(0, len(names), 2)):
        procs = []
        for name in pair:
            out = ROOT / "runs" / "llm_cost" / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            for part in ("data", "tokenize", "manifest.json"):
                src = prepared / part
                (shutil.copytree if src.is_dir() else shutil.copy)(src, out / part)
            cmd = command(name, minutes)
            cmd[0] = str(Path(sys.executable).with_name("genrec"))
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in procs:
            if p.wait():
                raise SystemExit(f"a training run failed: {p.args}")
    collect(names, minutes)


def _row(name: str, run: Path, minutes: float) -> dict:
    log = [json.loads(line) for line in (run / "train" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "transitions_per_s" in r]
    valid = [r["valid"] for r in log if "valid" in r][-1]
    return {
        "variant": name,
        "system": VARIANTS[name][0],
        "minutes": minutes,
        "steps": steps[-1]["step"],
        "transitions_per_s": statistics.median(r["transitions_per_s"] for r in steps),
        "examples_per_s": statistics.median(r["examples_per_s"] for r in steps),
        "valid_ndcg@10": round(valid["ndcg@10"], 4),
        "valid_recall@10": round(valid["recall@10"], 4),
        "valid_users": valid["users"],
        "ndcg_per_minute": round(valid["ndcg@10"] / minutes, 5),
        "command": " ".join(command(name, minutes)) + "  (OMP_NUM_THREADS=1, two runs at a time)",
        "cpu": _cpu(),
        # the code that trained it, as the run's manifest recorded it at export
        "commit": json.loads((run / "manifest.json").read_text())["stages"]["model"]["commit"],
        "measured": time.strftime("%Y-%m-%d"),
    }


def _short(commit: str) -> str:
    """A short commit; ``-dirty`` says that files other than results differed from it (the trainer
    records the commit at export)."""
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def collect(names: list[str], minutes: float) -> None:
    rows = [_row(n, ROOT / "runs" / "llm_cost" / n, minutes) for n in names]
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    base = next((r for r in rows if r["variant"] == "prefixes"), rows[0])
    lines = [
        BEGIN,
        "",
        f"Each row: `{CONFIG}` with its overrides for {minutes:g} minutes ({rows[0]['cpu']}, commit "
        f"{_short(rows[0]['commit'])}), validation on {rows[0]['valid_users']} users. Commands in "
        "`bench/results/llm_cost.json`.",
        "",
        "| variant | transitions/s | vs prompts | steps | valid NDCG@10 | valid Recall@10 | NDCG@10 per minute |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["transitions_per_s"] / base["transitions_per_s"]
        lines.append(
            f"| {r['system']} | {r['transitions_per_s']:.1f} | {ratio:.1f}x | {r['steps']} | "
            f"{r['valid_ndcg@10']:.4f} | {r['valid_recall@10']:.4f} | {r['ndcg_per_minute']:.4f} |"
        )
    lines += ["", END]
    text = DOCS.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    DOCS.write_text(text[:start] + "\n".join(lines) + text[stop:])
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("run")
    a.add_argument("prepared", type=Path)
    a.add_argument("--minutes", type=float, default=6)
    a.add_argument("--variants", nargs="+", default=list(VARIANTS))
    b = sub.add_parser("collect")
    b.add_argument("--minutes", type=float, default=6)
    b.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = ap.parse_args()
    if args.what == "run":
        run(args.prepared, args.minutes, args.variants)
    else:
        collect(args.variants, args.minutes)


if __name__ == "__main__":
    main()
