"""Preference alignment ablation: SFT, SFT + S-DPO (`genrec align`), and the control, 3 seeds, all users.

    python bench/align_ablation.py run demo [--seeds 0 1 2]
    python bench/align_ablation.py collect demo [--seeds 0 1 2]
    python bench/align_ablation.py run beauty --seeds 0 --from-headline [--variants sdpo] [--max-users 4000]

For each seed, runs/align-DATASET-sS is the dataset's recipe trained as its config says
(`genrec data prepare`, `tokenize`, `train`; skipped when RUN/model exists). Then:

* ``sft``: RUN/model as trained, evaluated on every test user under both protocols;
* ``sdpo``: `genrec align` with the align section's defaults (S-DPO on the model's own beams,
  plus the chosen answer's cross-entropy), evaluated the same way;
* ``control``: the same alignment run with the preference loss switched off
  (``align.preference_weight=0``): only the cross-entropy on the same transitions for the same
  steps, so the row says what the preference term itself adds.

``--from-headline`` starts from the recipe bench/headline.py trained (runs/headline-DATASET-sS,
its ``sft`` row is that run as it was scored there), so a dataset whose recipe takes an hour to
train is aligned without training it again. ``--variants`` runs some of the three (two
processes, one variant each, use both cores), ``--max-users N`` scores N sampled test users
(`genrec evaluate --max-users`: the same users as headline.py's sampled rows; such rows are
named by their sample), and ``--set KEY=VALUE`` adds align overrides to both aligned variants
(recorded in the rows' config and command).

The aligned models are exported whatever validation says (``align.patience=0``, the last step
kept is the best validation; the row records both). ``collect`` averages the seeds into rows of
bench/results/results.jsonl (dataset, system, protocol, 3 seeds, all users) and regenerates
docs/results.md with bench/quality.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from headline import _sample  # noqa: E402
from headline import _sets as _headline_sets  # noqa: E402
from quality import mean_sd, merge_rows  # noqa: E402
from serving import _cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "results.jsonl"
CONFIGS = {"demo": "configs/demo.yaml", "beauty": "configs/beauty-scratch.yaml"}
NAMES = {"demo": "Demo", "beauty": "Beauty"}
VARIANTS = {
    "sft": [],
    "sdpo": [],
    "control": ["align.preference_weight=0", "align.sft_weight=1"],
}
SYSTEMS = {
    "sft": "genrec, the dataset's recipe (SFT)",
    "sdpo": "genrec, SFT + S-DPO on its own beams (genrec align)",
    "control": "genrec, SFT + next-item CE on the same transitions and steps (control for S-DPO)",
}


def _genrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "genrec.cli", *args]


def _call(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    shown = "genrec " + " ".join(cmd[3:])
    with open(log, "a") as f:
        f.write(f"$ {shown}\n")
        f.flush()
        if subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {shown} (see {log})")


def _sets(rd: Path, seed: int, extra: list[str] = ()) -> list[str]:
    sets = [
        f"run_dir={rd.relative_to(ROOT)}",
        f"seed={seed}",
        f"sasrec.seed={seed}",
        "sasrec.num_threads=1",
        "train.num_threads=1",
        f"train.distill_from={rd.relative_to(ROOT)}/tokenize/collab_sasrec",
        *extra,
    ]
    return [x for s in sets for x in ("-s", s)]


def _evaluate(rd: Path, log: Path, max_users: int = 0) -> None:
    sample = ["--max-users", str(max_users)] if max_users else []
    for name, flag in (("test.json", "--no-exclude-seen"), ("test_xseen.json", "--exclude-seen")):
        if not (rd / "eval" / name).is_file():
            _call(_genrec("evaluate", str(rd.relative_to(ROOT)), flag, *sample), log)


def _start(dataset: str, seed: int, from_headline: bool) -> Path:
    """The seed's SFT run: the recipe headline.py trained, or runs/align-DATASET-sS."""
    if from_headline:
        return ROOT / "runs" / f"headline-{dataset}-s{seed}"
    return ROOT / "runs" / f"align-{dataset}-s{seed}"


def _variant_dir(dataset: str, seed: int, variant: str, from_headline: bool) -> Path:
    if variant == "sft" and from_headline:
        return _start(dataset, seed, True)
    return ROOT / "runs" / f"align-{dataset}-s{seed}-{variant}"


def _run_sets(dataset: str, rd: Path, seed: int, from_headline: bool, extra: list[str] = ()) -> list[str]:
    if from_headline:  # exactly the overrides headline.py trained the start with, so its model is the one aligned
        sets = _headline_sets(dataset, seed)
        sets[sets.index(f"run_dir={_start(dataset, seed, True).relative_to(ROOT)}")] = f"run_dir={rd.relative_to(ROOT)}"
        return sets + [x for s in extra for x in ("-s", s)]
    return _sets(rd, seed, list(extra))


def run(
    dataset: str,
    seeds: list[int],
    variants: list[str],
    from_headline: bool = False,
    max_users: int = 0,
    overrides: tuple[str, ...] = (),
) -> None:
    config = CONFIGS[dataset]
    for seed in seeds:
        rd = _start(dataset, seed, from_headline)
        log = ROOT / "runs" / f"align-{dataset}-s{seed}.log"
        if not (rd / "model").is_dir():
            if from_headline:
                raise SystemExit(
                    f"{rd} has no model: run `python bench/headline.py run {dataset} --seeds {seed}` first"
                )
            for stage in (["data", "prepare"], ["tokenize"], ["train"]):
                _call(_genrec(*stage, config, *_sets(rd, seed)), log)
        for variant in variants:
            vd = _variant_dir(dataset, seed, variant, from_headline)
            if (vd / "eval" / "test_xseen.json").is_file():
                continue
            if vd != rd and not (vd / "align").is_dir():  # an alignment under way resumes (its mined preferences)
                shutil.rmtree(vd, ignore_errors=True)
                shutil.copytree(rd, vd, ignore=shutil.ignore_patterns("align", "eval", "baselines"))
            if variant != "sft":
                extra = ["align.patience=0", *VARIANTS[variant], *overrides]
                _call(_genrec("align", config, *_run_sets(dataset, vd, seed, from_headline, extra)), log)
            _evaluate(vd, log, max_users)


def collect(
    dataset: str,
    seeds: list[int],
    variants: list[str],
    from_headline: bool = False,
    max_users: int = 0,
    overrides: tuple[str, ...] = (),
) -> None:
    rows = []
    for variant in variants:
        for name, protocol in (("test.json", "seen items kept"), ("test_xseen.json", "seen items excluded")):
            evals, runs, commands, minutes = [], [], [], []
            for seed in seeds:
                vd = _variant_dir(dataset, seed, variant, from_headline)
                m = json.loads((vd / "eval" / name).read_text())
                evals.append(m)
                info = json.loads((vd / "manifest.json").read_text())["stages"]["model"]
                aligned = info.get("aligned", {})
                runs.append(
                    {
                        "run": str(vd.relative_to(ROOT)),
                        "train_steps": info.get("steps"),
                        "valid_ndcg@10": info.get("best_valid_ndcg@10"),
                        **(
                            {
                                "align_steps": aligned["steps"],
                                "align_valid_start": aligned["start_valid_ndcg@10"],
                                "align_valid_best": aligned["best_valid_ndcg@10"],
                                "align_best_step": aligned["best_step"],
                                "align_minutes": aligned["minutes"],
                                "chosen_in_beams": aligned["chosen_in_beams"],
                            }
                            if aligned
                            else {}
                        ),
                        "seconds_per_user": m["genrec"].get("seconds_per_user"),
                    }
                )
                minutes.append(aligned.get("minutes", 0.0))
                log = (
                    ROOT
                    / "runs"
                    / (f"{vd.name}.log" if vd.name.startswith("headline-") else f"align-{dataset}-s{seed}.log")
                )
                commands += [
                    c[2:] for c in log.read_text().splitlines() if c.startswith("$ ") and f"{vd.name} " in c + " "
                ]
            metrics = {
                k: mean_sd([e["genrec"][k] for e in evals])
                for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr", "coverage@10", "invalid_rate")
            }
            rows.append(
                {
                    "dataset": NAMES[dataset],
                    "system": SYSTEMS[variant],
                    "protocol": protocol,
                    "users": evals[0]["users"],
                    "user_sample": _sample(evals[0]),
                    "seeds": seeds,
                    "metrics": metrics,
                    "minutes": mean_sd(minutes) if variant != "sft" else None,
                    "commit": ", ".join(
                        sorted({e["commit"][:12] + ("-dirty" if e["commit"].endswith("-dirty") else "") for e in evals})
                    ),
                    "cpu": _cpu(),
                    "config": f"{CONFIGS[dataset]} (seed, sasrec.seed = S)"
                    + ("" if variant == "sft" else "; genrec align with the align section's defaults")
                    + (f" and {' '.join(VARIANTS[variant])}" if VARIANTS[variant] else "")
                    + (f" and {' '.join(overrides)}" if overrides and variant != "sft" else ""),
                    "command": f"python bench/align_ablation.py run {dataset} --seeds {' '.join(map(str, seeds))}"
                    + (" --from-headline" if from_headline else "")
                    + (f" --max-users {max_users}" if max_users else "")
                    + (f" --set {' '.join(overrides)}" if overrides else ""),
                    "published": False,
                    "headline": False,
                    "notes": (
                        ["minutes: the alignment loop only (mining, reference pass and steps)."]
                        if variant != "sft"
                        else []
                    )
                    + [f"seed {seeds[0]}'s commands: " + " ; ".join(c for c in commands if f"-s{seeds[0]}-" in c)]
                    + [json.dumps(r) for r in runs]
                    + [
                        f"{e['commit'][:12]}-dirty: docs only (no code change; docs no longer count as dirty)"
                        for e in evals
                        if e["commit"].endswith("-dirty")
                    ][:1],
                    "runs": [],
                }
            )
    merge_rows(rows, RESULTS)
    for r in rows:
        m = r["metrics"]
        print(f"{r['system'][:60]:60s} {r['protocol']:20s} N@10 {m['ndcg@10']} R@10 {m['recall@10']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    for name in ("run", "collect"):
        a = sub.add_parser(name)
        a.add_argument("dataset", choices=sorted(CONFIGS))
        a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        a.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
        a.add_argument(
            "--from-headline", action="store_true", help="start from runs/headline-DATASET-sS (bench/headline.py run)"
        )
        a.add_argument("--max-users", type=int, default=0, help="score this many sampled test users (0: all)")
        a.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="align overrides for both variants")
    args = ap.parse_args()
    (run if args.what == "run" else collect)(
        args.dataset, args.seeds, args.variants, args.from_headline, args.max_users, tuple(args.set)
    )


if __name__ == "__main__":
    main()
