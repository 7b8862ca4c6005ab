"""Where the pretrained LM wins: SmolLM2 beside the scratch model on new items, text requests and the next item.

    python bench/lm_wins.py run demo|scientific [--minutes 45] [--users 1000]
    python bench/lm_wins.py docs

It starts from the cold-start run of `bench/cold_start.py run DATASET` (runs/cold-DATASET-newest-s0:
10% of items held out, IDs from item text) and trains, on copies of its data and IDs:

* ``scratch``: the small Llama from scratch with the recipe of configs/demo.yaml (windows +
  history loss, taught by the cold run's SASRec-CE) and the ``conversational`` task at 0.5, so
  it has read text requests; on Scientific with the 14-minute budget of
  configs/scientific-scratch.yaml, whose own training recipe (prefixes, no teacher) stays far
  from trained at that budget;
* ``smollm2``: SmolLM2-135M-Instruct with LoRA, the cheaper recipe `bench/llm_cost.py` measured
  (windows + history loss, the first 10 of 30 layers), the same tasks, for ``--minutes``.

Both are then scored on the same ``--users`` test users (sampled with seed 0) on three measures,
by `genrec evaluate`: the next item on warm targets, held-out items on cold targets (0 and 1 of
10 places given to new items), and the natural-language request protocol (`--requests`).
Rows go to bench/results/lm_wins.json with their commands; `docs` writes the table into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cold_start import _call, _genrec, write_section  # noqa: E402
from serving import _cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "lm_wins.json"
BEGIN, END = "<!-- lm_wins:begin (bench/lm_wins.py docs) -->", "<!-- lm_wins:end -->"
CONFIGS = {"demo": "configs/demo.yaml", "scientific": "configs/scientific-scratch.yaml"}
TASKS = "train.tasks={next_item: 1.0, conversational: 0.5}"
#: the demo recipe's training settings where a dataset's config differs (Scientific's 14 minutes kept)
SCRATCH = {
    "scientific": [
        "train.next_item_examples=windows",
        "train.history_loss=1.0",
        "train.distill_weight=1.0",
        "train.lr=0.003",
        "train.batch_size=64",
        "train.max_steps=100000",
        "train.anneal_by_time=true",
        "train.eval_every=0",
    ]
}
SMOLLM2 = [
    "model.name=smollm2",
    "model.keep_layers=10",
    "train.finetune=lora",
    "train.lora_r=16",
    "train.lr=0.002",
    "train.batch_size=16",
    "train.next_item_examples=windows",
    "train.history_loss=1.0",
    "train.distill_weight=0.0",
    "train.max_steps=100000",
    "train.anneal_by_time=true",
    "train.eval_every=0",
    "train.eval_users=100",
    "train.save_every=0",
    TASKS,
]


def _copy_prepared(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for part in ("data", "tokenize", "baselines", "manifest.json"):
        p = src / part
        (shutil.copytree if p.is_dir() else shutil.copy)(p, dst / part)


def _train(dataset: str, variant: str, base: Path, minutes: float, log: Path) -> Path:
    """The run folder of one trained variant."""
    config = CONFIGS[dataset]
    rd = ROOT / "runs" / f"lmwins-{dataset}-{variant}"
    _copy_prepared(base, rd)
    sets = [
        f"run_dir={rd.relative_to(ROOT)}",
        "data.cold_items=0.1",
        "tokenize.embedding.source=text",
        "train.num_threads=1",
    ]
    if variant == "scratch":
        sets += [*SCRATCH.get(dataset, []), TASKS, f"train.distill_from={rd.relative_to(ROOT)}/baselines/sasrec"]
    else:
        sets += [*SMOLLM2, f"train.max_minutes={minutes:g}"]
    _call(_genrec("train", config, *[x for s in sets for x in ("-s", s)]), log)
    return rd


def _evaluate(rd: Path, users: int, log: Path) -> None:
    for slots in (0, 1):
        _call(
            _genrec("evaluate", str(rd.relative_to(ROOT)), "--max-users", str(users), "--new-item-slots", str(slots)),
            log,
        )
    _call(_genrec("evaluate", str(rd.relative_to(ROOT)), "--requests", "--max-users", str(users)), log)


def _measures(rd: Path) -> dict:
    out = {}
    for slots in (0, 1):
        m = json.loads((rd / "eval" / ("test" + (f"_new{slots}" if slots else "") + ".json")).read_text())["genrec"]
        keep = ("recall@10", "ndcg@10", "users")
        out[f"new{slots}"] = {
            "all": {k: m[k] for k in keep},
            "cold": {k: m["cold_targets"][k] for k in keep},
            "warm": {k: m["warm_targets"][k] for k in keep},
            "cold_share@10": m["cold_share@10"],
        }
    req = json.loads((rd / "eval" / "test_requests.json").read_text())
    out["requests"] = {
        "users": req["users"],
        **{
            form: {
                name: {k: req[form][name][k] for k in ("recall@10", "ndcg@10")}
                for name in req[form]
                if name != "history_items_resolved"
            }
            for form in ("wish", "liked_wish")
        },
    }
    return out


def run(dataset: str, minutes: float, users: int) -> None:
    base = ROOT / "runs" / f"cold-{dataset}-newest-s0"
    if not (base / "model").is_dir():
        raise SystemExit(f"{base} has no model: run `python bench/cold_start.py run {dataset}` first")
    log = ROOT / "runs" / f"lmwins-{dataset}.log"
    for variant in ("scratch", "smollm2"):
        rd = _train(dataset, variant, base, minutes, log)
        _evaluate(rd, users, log)
    collect(dataset)


def collect(dataset: str) -> None:
    """Rows of the finished runs (commands from runs/lmwins-DATASET.log) into the results file, then the docs."""
    logged = [
        line[2:] for line in (ROOT / "runs" / f"lmwins-{dataset}.log").read_text().splitlines() if line.startswith("$ ")
    ]
    rows = []
    for variant in ("scratch", "smollm2"):
        rd = ROOT / "runs" / f"lmwins-{dataset}-{variant}"
        name = str(rd.relative_to(ROOT))
        mine = [c for c in logged if f"run_dir={name} " in c + " " or f" {name} " in c + " "]
        manifest = json.loads((rd / "manifest.json").read_text())["stages"]["model"]
        state = json.loads((rd / "train" / "state.json").read_text())
        rows.append(
            {
                "dataset": dataset,
                "variant": variant,
                "train_minutes": round(state["minutes"], 1),
                "steps": manifest["steps"],
                **_measures(rd),
                # the last train command and the evaluations after it
                "commands": mine[max(i for i, c in enumerate(mine) if c.startswith("genrec train")) :],
                "cpu": _cpu(),
                "commit": json.loads((rd / "eval" / "test_requests.json").read_text()).get("commit")
                or json.loads((rd / "eval" / "test.json").read_text())["commit"],
                "trained_at_commit": manifest["commit"],
                "measured": time.strftime("%Y-%m-%d"),
            }
        )
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([r for r in old if r["dataset"] != dataset] + rows, indent=2) + "\n")
    docs()


def docs() -> None:
    rows = json.loads(RESULTS.read_text())
    lines = [BEGIN, ""]
    for dataset in sorted({r["dataset"] for r in rows}):
        part = [r for r in rows if r["dataset"] == dataset]
        first = part[0]
        lines += [
            f"**{dataset}**: {first['new0']['all']['users']} test users sampled with seed 0 "
            f"({first['new0']['cold']['users']} with a held-out target; {first['requests']['users']} asked by "
            f"request), {first['cpu']}, {first['measured']}. Commands in `bench/results/lm_wins.json`.",
            "",
            "| model | train min | warm N@10 | cold R@10 (1 new place) | cold N@10 (1 new place) | "
            "wish R@10 (IDs / text / MiniLM) | liked+wish R@10 (IDs / text / MiniLM+history) |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for r in part:
            w, c, q = r["new0"]["warm"], r["new1"]["cold"], r["requests"]
            wish, lw = q["wish"], q["liked_wish"]
            lines.append(
                f"| {r['variant']} | {r['train_minutes']:.0f} | {w['ndcg@10']:.4f} | {c['recall@10']:.4f} | "
                f"{c['ndcg@10']:.4f} | {wish['resolved_ids']['recall@10']:.3f} / {wish['text_prompt']['recall@10']:.3f}"
                f" / {wish['minilm']['recall@10']:.3f} | {lw['resolved_ids']['recall@10']:.3f} / "
                f"{lw['text_prompt']['recall@10']:.3f} / {lw['minilm_history']['recall@10']:.3f} |"
            )
        lines.append("")
    lines.append(END)
    write_section(lines)
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("run")
    a.add_argument("dataset", choices=sorted(CONFIGS))
    a.add_argument("--minutes", type=float, default=45)
    a.add_argument("--users", type=int, default=1000)
    c = sub.add_parser("collect")
    c.add_argument("dataset", choices=sorted(CONFIGS))
    sub.add_parser("docs")
    args = ap.parse_args()
    if args.what == "run":
        run(args.dataset, args.minutes, args.users)
    elif args.what == "collect":
        collect(args.dataset)
    else:
        docs()


if __name__ == "__main__":
    main()
