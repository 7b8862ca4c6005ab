"""Teacher ablation: what the distillation teacher gives the student, 3 seeds, all users, both protocols.

    python bench/teacher_ablation.py run demo [--seeds 0 1 2] [--variants single ensemble masked] [--steps N]
    python bench/teacher_ablation.py collect demo [--seeds 0 1 2] [--variants single ensemble masked] [--steps N]

For each seed S, runs/teacher-DATASET-sS holds the dataset's prepared data and semantic IDs
(`genrec data prepare`, `genrec tokenize` with seed = sasrec.seed = S: the IDs are cut from
SASRec seed S's item table, and that SASRec is the single teacher). Students are trained from
those same IDs with the dataset's config, differing only in their teacher:

* ``single``: the config as it is (``train.teacher_seeds=1``, the SASRec that cut the IDs);
* ``ensemble``: ``train.teacher_seeds=M`` (``--members``): that SASRec and M-1 more seeds, averaged;
* ``masked``: ``train.distill_mask_seen=true``: the single teacher with the items already shown
  given no mass, i.e. the teacher as it ranks with seen items excluded;
* ``item-rows`` (not run by default): ``masked`` plus ``train.item_tokens=true
  train.item_token_rows=teacher``: the student also reads each history item through the
  teacher's own item vector (frozen), not only through its shared codes.
* ``length-grouped`` (not run by default) changes how the student's batches are cut, not its
  teacher: ``train.group_by_length=true`` (batches of similar length, a fraction of the
  padding). With ``--steps`` it says whether the faster step costs quality at the same steps.
  The teacher variants pin ``train.group_by_length=false``, the batches their rows were
  measured with, since grouping became the default after them.

``--steps N`` trains every student for N steps with no time budget (``train.max_steps=N
train.max_minutes=0``) in folders and rows of their own: the config's time budget anneals the
learning rate by the clock, so students trained while the machine is busy would differ by
load, not by teacher. Each student is evaluated on every test user under both protocols, and so are the teachers
themselves (SASRec seed S alone, and the M-seed ensemble), with the one evaluator. ``collect``
averages the seeds into rows of bench/results/results.jsonl and regenerates docs/results.md
with bench/quality.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import mean_sd, merge_rows  # noqa: E402
from serving import _cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "results.jsonl"
CONFIGS = {"demo": "configs/demo.yaml"}
NAMES = {"demo": "Demo"}
PROTOCOLS = (("test.json", "seen items kept", False), ("test_xseen.json", "seen items excluded", True))
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr", "coverage@10", "invalid_rate")


def _genrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "genrec.cli", *args]


def _call(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` at one thread, its output appended to ``log``; the minutes it took."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    shown = ("genrec " + " ".join(cmd[3:])) if cmd[1:3] == ["-m", "genrec.cli"] else " ".join(cmd[1:])
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {shown}\n")
        f.flush()
        if subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {shown} (see {log})")
    return (time.perf_counter() - t) / 60


def _sets(rd: Path, seed: int, extra: list[str] = ()) -> list[str]:
    sets = [
        f"run_dir={rd.relative_to(ROOT)}",
        f"seed={seed}",
        f"sasrec.seed={seed}",
        "sasrec.num_threads=1",
        "train.num_threads=1",
        *extra,
    ]
    return [x for s in sets for x in ("-s", s)]


def _variants(members: int) -> dict[str, list[str]]:
    # the teacher variants keep the batches they were measured with (shuffled, before length
    # grouping became the default), so their rows stay reproducible by their commands
    plain = ["train.group_by_length=false"]
    return {
        "single": plain,
        "ensemble": [f"train.teacher_seeds={members}", *plain],
        "masked": ["train.distill_mask_seen=true", *plain],
        "item-rows": [
            "train.distill_mask_seen=true",
            "train.item_tokens=true",
            "train.item_token_rows=teacher",
            *plain,
        ],
        # not a teacher: how the same student's batches are cut (a speed option)
        "length-grouped": ["train.group_by_length=true"],
    }


def _teacher_folders(vd: Path) -> list[Path]:
    return [vd / "tokenize" / "collab_sasrec"] + sorted((vd / "teachers").glob("sasrec-seed*"))


def _score_teachers(vd: Path) -> None:
    """The variant's teacher (one SASRec or the ensemble) on every test user, both protocols."""
    sys.path.insert(0, str(ROOT))
    from genrec.data import PreparedDataset
    from genrec.evaluation.evaluator import Evaluator
    from genrec.io import atomic_write_json
    from genrec.models.sasrec import SASRecEnsemble

    out = vd / "eval" / "teacher"
    if (out / "test_xseen.json").is_file():
        return
    dataset = PreparedDataset.load(vd / "data")
    folders = _teacher_folders(vd)
    teacher = SASRecEnsemble.load(folders)
    for name, _, exclude_seen in PROTOCOLS:
        result = Evaluator(dataset, "test", 0, 0, exclude_seen).evaluate(teacher)
        atomic_write_json(out / name, {**result.to_dict(), "members": [str(f.relative_to(ROOT)) for f in folders]})


def _budget(steps: int) -> tuple[list[str], str]:
    """The overrides of ``--steps`` and the suffix of its folders."""
    return ([f"train.max_steps={steps}", "train.max_minutes=0"], f"-steps{steps}") if steps else ([], "")


def run(dataset: str, seeds: list[int], members: int, variants: list[str], steps: int = 0) -> None:
    config = CONFIGS[dataset]
    budget, suffix = _budget(steps)
    for seed in seeds:
        base = ROOT / "runs" / f"teacher-{dataset}-s{seed}"
        log = ROOT / "runs" / f"teacher-{dataset}-s{seed}.log"
        if not (base / "tokenize").is_dir():
            for stage in (["data", "prepare"], ["tokenize"]):
                _call(_genrec(*stage, config, *_sets(base, seed)), log)
        for variant in variants:
            extra = _variants(members)[variant] + budget
            vd = base.parent / f"{base.name}-{variant}{suffix}"
            if not (vd / "eval" / "test_xseen.json").is_file():
                if not (vd / "model").is_dir():
                    shutil.rmtree(vd, ignore_errors=True)
                    shutil.copytree(base, vd)
                    minutes = _call(_genrec("train", config, *_sets(vd, seed, extra)), log)
                    (vd / "train_minutes.txt").write_text(f"{minutes:.2f}\n")
                for flag in ("--no-exclude-seen", "--exclude-seen"):
                    _call(_genrec("evaluate", str(vd.relative_to(ROOT)), flag), log)
            if variant not in ("masked", "item-rows"):  # their teacher is the single one, scored already
                _score_teachers(vd)


def _fit_minutes(vd: Path) -> list[float]:
    """Minutes each of the variant's teacher SASRecs took to fit (tokenize's first)."""
    return [json.loads((f / "sasrec.json").read_text())["train_seconds"] / 60 for f in _teacher_folders(vd)]


def _commit(evals: list[dict]) -> str:
    return ", ".join(sorted({e["commit"][:12] + ("-dirty" if e["commit"].endswith("-dirty") else "") for e in evals}))


def collect(dataset: str, seeds: list[int], members: int, variants: list[str], steps: int = 0) -> None:
    budget, suffix = _budget(steps)
    command = (
        f"python bench/teacher_ablation.py run {dataset} --seeds {' '.join(map(str, seeds))} --members {members} "
        f"--variants {' '.join(variants)}" + (f" --steps {steps}" if steps else "")
    )
    systems = {
        ("single", "genrec"): "genrec, teacher: the SASRec that cut the IDs (distill_mask_seen off)",
        ("ensemble", "genrec"): f"genrec, teacher = ensemble of {members} SASRec seeds (train.teacher_seeds={members})",
        ("masked", "genrec"): "genrec, teacher with seen items masked (train.distill_mask_seen, the make demo recipe)",
        ("item-rows", "genrec"): "genrec, masked teacher + frozen item rows from its item table "
        "(train.item_token_rows=teacher)",
        ("length-grouped", "genrec"): "genrec, the make demo recipe + batches grouped by length "
        "(train.group_by_length)",
        ("single", "teacher"): "SASRec-CE (the single teacher)",
        ("ensemble", "teacher"): f"SASRec-CE, ensemble of {members} seeds (the ensemble teacher)",
    }
    tag = f" ({steps} steps, no time budget)" if steps else ""
    systems = {key: name + tag for key, name in systems.items() if key[0] in variants}
    rows = []
    for (variant, who), system in systems.items():
        for name, protocol, _ in PROTOCOLS:
            evals, notes, minutes = [], [], []
            for seed in seeds:
                vd = ROOT / "runs" / f"teacher-{dataset}-s{seed}-{variant}{suffix}"
                if who == "genrec":
                    e = json.loads((vd / "eval" / name).read_text())
                    evals.append({**e["genrec"], "commit": e["commit"]})
                    info = json.loads((vd / "manifest.json").read_text())["stages"]["model"]
                    minutes.append(float((vd / "train_minutes.txt").read_text()) + _fit_minutes(vd)[0])
                    notes.append(
                        json.dumps(
                            {
                                "run": str(vd.relative_to(ROOT)),
                                "train_steps": info.get("steps"),
                                "valid_ndcg@10": info.get("best_valid_ndcg@10"),
                                "minutes_with_teacher_fits": round(minutes[-1], 2),
                            }
                        )
                    )
                else:
                    e = json.loads((vd / "eval" / "teacher" / name).read_text())
                    evals.append(e)
                    minutes.append(sum(_fit_minutes(vd)))
                    notes.append(json.dumps({"members": e["members"]}))
            rows.append(
                {
                    "dataset": NAMES[dataset],
                    "system": system,
                    "protocol": protocol,
                    "users": json.loads((vd / "eval" / name).read_text())["users"],
                    "user_sample": "all",
                    "seeds": seeds,
                    "metrics": {k: mean_sd([e[k] for e in evals]) for k in METRICS if k in evals[0]},
                    "minutes": mean_sd(minutes) if minutes else None,
                    "commit": _commit(evals),
                    "cpu": _cpu(),
                    "config": f"{CONFIGS[dataset]} (seed, sasrec.seed = S)"
                    + "".join(f"; {x}" for x in _variants(members)[variant] + budget),
                    "command": command,
                    "published": False,
                    "headline": False,
                    "notes": (
                        [
                            "minutes: tokenize's SASRec fit + `genrec train` (which makes the ensemble's extra "
                            "SASRec fits)"
                            if who == "genrec"
                            else "minutes: the SASRec fits of the teacher's members"
                        ]
                    )
                    + (
                        [
                            "-dirty: bench scripts, configs and docs were being edited while these runs went; "
                            "genrec/ was as committed"
                        ]
                        if any(e["commit"].endswith("-dirty") for e in evals)
                        else []
                    )
                    + notes,
                    "runs": [],
                }
            )
    merge_rows(rows, RESULTS)
    for r in rows:
        m = r["metrics"]
        print(f"{r['system'][:70]:70s} {r['protocol']:20s} N@10 {m['ndcg@10']} R@10 {m['recall@10']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    for name in ("run", "collect"):
        a = sub.add_parser(name)
        a.add_argument("dataset", choices=sorted(CONFIGS))
        a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        a.add_argument("--members", type=int, default=3, help="SASRec seeds in the ensemble teacher")
        a.add_argument("--variants", nargs="+", default=["single", "ensemble", "masked"], choices=_variants(3))
        a.add_argument("--steps", type=int, default=0, help="train N steps, no time budget (0: the config's)")
    args = ap.parse_args()
    (run if args.what == "run" else collect)(args.dataset, args.seeds, args.members, args.variants, args.steps)


if __name__ == "__main__":
    main()
