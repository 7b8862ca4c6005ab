"""The cold-start protocol on one dataset: who can recommend an item nobody has interacted with?

    python bench/cold_start.py run demo|scientific [--seed 0] [--selection newest]
    python bench/cold_start.py docs           # the docs table from bench/results/cold_start.json

`run` holds out 10% of the items (``data.cold_items=0.1``: the newest by first interaction, or a
random draw) with the dataset's documented config, and IDs from item text
(``tokenize.embedding.source=text``: a held-out item has nothing else). It then scores, on every
test user, with the same evaluator:

* popularity and SASRec-CE (``genrec baseline``): they learn items from interactions only, so
  they cannot rank a held-out item;
* the content baseline (``genrec baseline content``): the items nearest to the history's MiniLM
  text vectors, new items included;
* genrec (the config's model, trained with ``genrec train``; taught by that SASRec when the
  config distils), with 0, 1 and 2 of the 10 places given to new items
  (``genrec evaluate --new-item-slots N``).

Every step is a `genrec` command, run with one thread; the rows keep the commands. Results are
cold targets (the test item is a held-out one), warm targets, all targets, and the share of
recommended places that are new items.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import _cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "cold_start.json"
DOCS = ROOT / "docs" / "new-items-and-requests.md"
BEGIN, END = "<!-- cold_start:begin (bench/cold_start.py docs) -->", "<!-- cold_start:end -->"
DATASETS = {"demo": "configs/demo.yaml", "scientific": "configs/scientific-scratch.yaml"}
SLOTS = (0, 1, 2)


def _genrec(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("genrec")), *args]


def _sh(cmd: list[str]) -> str:
    return " ".join(["genrec", *cmd[1:]])


def _call(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "a") as f:
        f.write(f"$ {_sh(cmd)}\n")
        f.flush()
        if subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {_sh(cmd)} (see {log})")


def write_section(lines: list[str], page: Path = DOCS) -> None:
    """Replace ``page``'s section between ``lines``' first and last line (its begin/end markers)."""
    text = page.read_text()
    start, stop = text.index(lines[0]), text.index(lines[-1]) + len(lines[-1])
    page.write_text(text[:start] + "\n".join(lines) + text[stop:])


def _metrics(m: dict) -> dict:
    """The numbers a row keeps: all, cold and warm targets, and the new items' share of places."""
    keep = ("recall@10", "ndcg@10", "users")
    return {
        "all": {k: m[k] for k in keep},
        "cold": {k: m["cold_targets"][k] for k in keep},
        "warm": {k: m["warm_targets"][k] for k in keep},
        "cold_share@10": m["cold_share@10"],
    }


def run(dataset: str, seed: int, selection: str) -> None:
    config = DATASETS[dataset]
    rd = ROOT / "runs" / f"cold-{dataset}-{selection}-s{seed}"
    rd.mkdir(parents=True, exist_ok=True)
    log = rd / "bench.log"
    sets = [
        f"run_dir={rd.relative_to(ROOT)}",
        f"seed={seed}",
        "data.cold_items=0.1",
        f"data.cold_selection={selection}",
        "tokenize.embedding.source=text",
    ]
    opts = [x for s in sets for x in ("-s", s)]
    _call(_genrec("data", "prepare", config, *opts), log)
    _call(_genrec("tokenize", config, *opts), log)
    cmds = {
        "popularity": _genrec("baseline", "popularity", config, *opts),
        "content": _genrec("baseline", "content", config, *opts),
        "sasrec": _genrec(
            "baseline", "sasrec", config, *opts, "-s", "sasrec.num_threads=1", "-s", f"sasrec.seed={seed}"
        ),
    }
    for cmd in cmds.values():
        _call(cmd, log)
    from genrec.config import load_config

    train = [*opts, "-s", "train.num_threads=1"]
    if load_config(ROOT / config, sets).train.distill_weight > 0:
        teacher = "sasrec" if seed == 0 else f"sasrec-seed{seed}"
        train += ["-s", f"train.distill_from={rd.relative_to(ROOT)}/baselines/{teacher}"]
    cmds["train"] = _genrec("train", config, *train)
    _call(cmds["train"], log)
    for slots in SLOTS:
        _call(_genrec("evaluate", str(rd.relative_to(ROOT)), "--new-item-slots", str(slots)), log)
    collect(dataset, seed, selection)


def collect(dataset: str, seed: int, selection: str) -> None:
    """Rows of a finished run folder (commands from its bench.log) into the results file, then the docs."""
    rd = ROOT / "runs" / f"cold-{dataset}-{selection}-s{seed}"
    logged = [line[2:] for line in (rd / "bench.log").read_text().splitlines() if line.startswith("$ genrec ")]

    def command(*words: str) -> str:
        return next(c for c in reversed(logged) if c.startswith(" ".join(["genrec", *words])))

    manifest = json.loads((rd / "manifest.json").read_text())["stages"]["model"]
    rows = []
    record = {
        "dataset": dataset,
        "selection": selection,
        "seed": seed,
        "cpu": _cpu(),
        "measured": time.strftime("%Y-%m-%d"),
    }
    for name in ("popularity", "content", "sasrec"):
        sub = f"sasrec-seed{seed}" if name == "sasrec" and seed else name
        m = json.loads((rd / "baselines" / sub / "metrics_test.json").read_text())
        cmd = command("baseline", name)
        rows.append({**record, "system": name, **_metrics(m), "command": cmd, "commit": m["commit"]})
    for slots in SLOTS:
        m = json.loads((rd / "eval" / ("test" + (f"_new{slots}" if slots else "") + ".json")).read_text())
        rows.append(
            {
                **record,
                "system": f"genrec, {slots} new-item places" if slots else "genrec",
                **_metrics(m["genrec"]),
                "train_steps": manifest["steps"],
                "command": command("train")
                + " && "
                + command("evaluate", str(rd.relative_to(ROOT)), "--new-item-slots", str(slots)),
                "commit": m["commit"],
                "trained_at_commit": manifest["commit"],
            }
        )
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    same = {(r["dataset"], r["selection"], r["seed"]) for r in rows}
    RESULTS.write_text(
        json.dumps([r for r in old if (r["dataset"], r["selection"], r["seed"]) not in same] + rows, indent=2) + "\n"
    )
    docs()


def docs() -> None:
    rows = json.loads(RESULTS.read_text())
    lines = [BEGIN, ""]
    for dataset, selection, seed in sorted({(r["dataset"], r["selection"], r["seed"]) for r in rows}):
        part = [r for r in rows if (r["dataset"], r["selection"], r["seed"]) == (dataset, selection, seed)]
        first = part[0]
        lines += [
            f"**{dataset}**, 10% of items held out ({selection}), seed {seed}: {first['all']['users']} test users, "
            f"{first['cold']['users']} of them with a held-out target ({first['cpu']}, {first['measured']}). "
            "Commands in `bench/results/cold_start.json`.",
            "",
            "| system | cold R@10 | cold N@10 | warm R@10 | warm N@10 | all R@10 | all N@10 | new items' places |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in part:
            c, w, a = r["cold"], r["warm"], r["all"]
            lines.append(
                f"| {r['system']} | {c['recall@10']:.4f} | {c['ndcg@10']:.4f} | {w['recall@10']:.4f} | "
                f"{w['ndcg@10']:.4f} | {a['recall@10']:.4f} | {a['ndcg@10']:.4f} | {r['cold_share@10']:.3f} |"
            )
        lines.append("")
    lines.append(END)
    write_section(lines)
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("run")
    a.add_argument("dataset", choices=sorted(DATASETS))
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--selection", choices=("newest", "random"), default="newest")
    c = sub.add_parser("collect")
    c.add_argument("dataset", choices=sorted(DATASETS))
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--selection", choices=("newest", "random"), default="newest")
    sub.add_parser("docs")
    args = ap.parse_args()
    if args.what == "run":
        run(args.dataset, args.seed, args.selection)
    elif args.what == "collect":
        collect(args.dataset, args.seed, args.selection)
    else:
        docs()


if __name__ == "__main__":
    main()
