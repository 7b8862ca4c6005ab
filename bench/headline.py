"""The headline rows: the recommended recipe, its teacher and popularity, every test user, both protocols.

    python bench/headline.py run beauty [--seeds 0 1 2]
    python bench/headline.py bar beauty [--seeds 0 1 2]
    python bench/headline.py collect beauty [--seeds 0 1 2] [--with-recorded]
    python bench/headline.py run beauty --tag NAME --set KEY=VALUE ... [--seeds 0 1 2] [--max-users N]
    python bench/headline.py collect beauty --tag NAME --set KEY=VALUE ... --recipe "ROW NAME"

For each seed S, runs/headline-DATASET-sS is the recipe of configs/beauty-scratch.yaml run with
the `genrec` CLI (seed = sasrec.seed = S): `data prepare`, `tokenize` (fits SASRec-CE seed S and
cuts the semantic IDs from its item table), `train` (distilled from that SASRec), then
`evaluate` under both protocols. The teacher (SASRec-CE seed S, as `tokenize` fitted it) and
popularity are scored on the same users with the same evaluator. Other datasets run the same
config with only their data section (and run folder) replaced.

``bar`` fits the bar, SASRec-CE trained to convergence (the config's sasrec section with a
200-epoch cap: early stopping on every validation user ends it), one model per seed on seed
0's prepared data (`genrec baseline sasrec`), and scores it under both protocols. The teacher
that seed 0's `tokenize` fitted is that same model when early stopping ended it before its cap
(same seed, data and settings; the cap only bounds the loop), so it is reused.

``collect`` averages the seeds into rows of bench/results/results.jsonl (headline rows once
three seeds of every test user are in) and regenerates docs/results.md with bench/quality.py;
``--systems`` rewrites only some of the rows (the others stay as they are). Rows keep each
seed's numbers, and ``--with-recorded`` adds a row's recorded seeds to those collected now:
runs/ is scratch, so seeds 0 and 1 collected in one sitting and seed 2 in another make one
three-seed row (`collect --seeds 2 --with-recorded`). A stage already done is skipped, so ``run`` resumes.

``--tag NAME --set KEY=VALUE ...`` runs a variant of the recipe beside it: its run folder,
runs/headline-DATASET-NAME-sS, starts from the data and semantic IDs of runs/headline-DATASET-sS
(copied, so the variant and the recipe share IDs and teacher seed by seed) and trains with the
overrides added. Its ``collect`` writes only the genrec rows, not marked headline, named by
``--recipe``. ``collect --systems genrec --recipe "ROW NAME"`` without a tag names the recipe's own
runs as another row, not headline either: a seed rerun beside a variant on the same machine, so
the two compare under the same clock and load. ``run --max-users N`` scores genrec on N sampled
test users (the same users in every run of the dataset), for a CPU too slow to decode them all;
its rows name the sample and are never headline rows.
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
from quality import load_rows, mean_sd, merge_rows  # noqa: E402
from serving import _cpu  # noqa: E402
from teacher_ablation import _fit_minutes, _score_teachers, _teacher_folders  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "results.jsonl"
CONFIG = "configs/beauty-scratch.yaml"
#: dataset -> (results name, overrides of the config: its data section)
DATASETS = {
    "beauty": ("Beauty", []),
    "scientific": (
        "Scientific",
        [
            "data.format=lcrec",
            "data.path=../../shared/data/amazon-scientific-2018",
            "data.name=Scientific",
        ],
    ),
}
PROTOCOLS = (("test.json", "seen items kept", False), ("test_xseen.json", "seen items excluded", True))
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr", "coverage@10", "invalid_rate")
RECIPE = "genrec 4x128, SASRec-CE IDs + distillation, seen-masked teacher, length-grouped batches (the recipe)"


def _run_dir(dataset: str, seed: int, tag: str = "") -> Path:
    return ROOT / "runs" / f"headline-{dataset}{'-' + tag if tag else ''}-s{seed}"


def _sets(dataset: str, seed: int, tag: str = "", extra: tuple[str, ...] = ()) -> list[str]:
    rd = _run_dir(dataset, seed, tag).relative_to(ROOT)
    sets = [f"run_dir={rd}", f"seed={seed}", f"sasrec.seed={seed}", "sasrec.num_threads=1", "train.num_threads=1"]
    return [x for s in (*sets, *DATASETS[dataset][1], *extra) for x in ("-s", s)]


def _call(args: list[str], log: Path, shown: str) -> float:
    """Run ``python args`` at one thread, output appended to ``log``; the minutes it took."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {shown}\n")
        f.flush()
        if subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {shown} (see {log})")
    return (time.perf_counter() - t) / 60


def _genrec(log: Path, *args: str) -> float:
    return _call(["-m", "genrec.cli", *args], log, "genrec " + " ".join(args))


def run(dataset: str, seeds: list[int], tag: str = "", overrides: tuple[str, ...] = (), max_users: int = 0) -> None:
    """Prepare, tokenize, train and evaluate each seed; ``max_users`` > 0 evaluates genrec on that
    many sampled test users (the same users for every run of a dataset; never a headline row)."""
    sample = ["--max-users", str(max_users)] if max_users else []
    for seed in seeds:
        rd, sets = _run_dir(dataset, seed, tag), _sets(dataset, seed, tag, overrides)
        log = rd.parent / f"{rd.name}.log"
        rel = str(rd.relative_to(ROOT))
        if tag and not (rd / "tokenize").is_dir():
            base = _run_dir(dataset, seed)
            if not (base / "tokenize").is_dir():
                raise SystemExit(f"a variant starts from the recipe's IDs: run `headline.py run {dataset}` first")
            rd.mkdir(parents=True, exist_ok=True)
            for name in ("data", "tokenize", "manifest.json"):
                (shutil.copytree if (base / name).is_dir() else shutil.copy)(base / name, rd / name)
        if not (rd / "data").is_dir():
            _genrec(log, "data", "prepare", CONFIG, *sets)
        if not (rd / "tokenize").is_dir():
            _genrec(log, "tokenize", CONFIG, *sets)
        if not (rd / "model").is_dir():
            _genrec(log, "train", CONFIG, *sets)
        if tag and len(_teacher_folders(rd)) > 1:  # a variant's own teacher, an ensemble: RUN/eval/teacher
            _score_teachers(rd)
        for name, _, exclude in PROTOCOLS:
            flag = "--exclude-seen" if exclude else "--no-exclude-seen"
            if not (rd / "eval" / name).is_file():
                _genrec(log, "evaluate", rel, flag, *sample)
            teacher = rd / "tokenize" / "collab_sasrec"
            if tag:  # the teacher and popularity are the recipe's, scored in its own run
                continue
            if not (teacher / f"metrics_test_all{'_xseen' if exclude else ''}.json").is_file():
                extra = ["--exclude-seen"] if exclude else []
                _call(
                    ["bench/quality_jobs.py", "sasrec-eval", rel, str(teacher.relative_to(ROOT)), *extra],
                    log,
                    " ".join(["python bench/quality_jobs.py sasrec-eval", rel, str(teacher.relative_to(ROOT)), *extra]),
                )
            if not (rd / "baselines" / "popularity" / f"metrics_test{'_xseen' if exclude else ''}.json").is_file():
                _genrec(log, "baseline", "popularity", CONFIG, *sets, flag)


BAR_EPOCHS = 200


def _bar_folder(dataset: str, seed: int) -> Path:
    """SASRec-CE seed ``seed`` trained to convergence, on seed 0's prepared data."""
    rd = _run_dir(dataset, 0)
    teacher = rd / "tokenize" / "collab_sasrec"
    if seed == 0 and (teacher / "sasrec.json").is_file():
        meta = json.loads((teacher / "sasrec.json").read_text())
        if meta["epochs_run"] < meta["config"]["epochs"]:  # early stopping ended it, not the cap
            return teacher
    return rd / "baselines" / ("sasrec" if seed == 0 else f"sasrec-seed{seed}")


def bar(dataset: str, seeds: list[int]) -> None:
    rd = _run_dir(dataset, 0)
    rel, log = str(rd.relative_to(ROOT)), rd.parent / f"{rd.name}.log"
    for seed in seeds:
        folder = _bar_folder(dataset, seed)
        sets = _sets(dataset, 0) + ["-s", f"sasrec.seed={seed}", "-s", f"sasrec.epochs={BAR_EPOCHS}"]
        if not (folder / "sasrec.json").is_file():
            _genrec(log, "baseline", "sasrec", CONFIG, *sets)
        for _, _, exclude in PROTOCOLS:
            if not (folder / f"metrics_test_all{'_xseen' if exclude else ''}.json").is_file():
                extra = ["--exclude-seen"] if exclude else []
                args = ["bench/quality_jobs.py", "sasrec-eval", rel, str(folder.relative_to(ROOT)), *extra]
                _call(args, log, "python " + " ".join(args))


def _by_minute(evals: list[dict], minutes: float, steps: int) -> dict:
    """Validation NDCG@10 keyed by training minute; runs that logged only steps get the minute
    interpolated from their total (the step rate is steady within a run)."""
    return {round(e.get("minutes", minutes * e["step"] / max(1, steps)), 1): round(e["ndcg@10"], 4) for e in evals}


def _commit(evals: list[dict]) -> str | None:
    commits = {e.get("commit") for e in evals if e.get("commit")}
    return ", ".join(sorted(c[:12] + ("-dirty" if c.endswith("-dirty") else "") for c in commits)) or None


def _metrics(evaluation: dict) -> dict:
    return {k: evaluation[k] for k in METRICS if k in evaluation}


def with_recorded_seeds(
    per_seed: list[dict], key: tuple[str, str, str, str], described: str, path: Path = RESULTS
) -> list[dict]:
    """``per_seed`` (each seed's numbers, collected now) joined by the seeds that the recorded row
    ``key`` (dataset, system, protocol, user sample) of ``path`` holds and these do not, sorted by
    seed: runs/ is scratch, the results file is kept. Seeds of another config never join."""
    fresh = {e["seed"] for e in per_seed}  # a seed collected now replaces its recorded numbers
    recorded = [e for e in _recorded_seeds(key, described, path) if e["seed"] not in fresh]
    return sorted(recorded + per_seed, key=lambda e: e["seed"])


def _recorded_seeds(key: tuple[str, str, str, str], described: str, path: Path) -> list[dict]:
    for row in load_rows(path):
        if (row["dataset"], row["system"], row["protocol"], row["user_sample"]) == key:
            if row["config"] != described:
                raise SystemExit(
                    f"the recorded row {key[1]!r} ({key[2]}) was made with {row['config']!r}, this collect with "
                    f"{described!r}: seeds of different configs do not average; rerun its seeds or collect "
                    "without --with-recorded"
                )
            if not row.get("per_seed"):
                raise SystemExit(
                    f"the recorded row {key[1]!r} ({key[2]}) keeps no per-seed numbers (collected before they were "
                    "recorded): rerun its seeds, or collect without --with-recorded"
                )
            return row["per_seed"]
    return []


def _commands(log: Path) -> list[str]:
    return [line[2:] for line in log.read_text().splitlines() if line.startswith("$ ")]


WHO = ("genrec", "teacher", "bar", "popularity")
#: seeds a headline row averages (DEVELOPERS.md: all test users, 3 seeds)
HEADLINE_SEEDS = 3


def _sample(evaluation: dict) -> str:
    """The row's user_sample for a `genrec evaluate` output: 'all', or 'N users, seed S' (--max-users)."""
    if not 0 < evaluation.get("max_users", 0) <= evaluation["users"]:  # a cap above the split's size samples none
        return "all"
    return f"{evaluation['users']} users, seed {evaluation['user_sample_seed']}"


def collect(
    dataset: str,
    seeds: list[int],
    bar_seeds: list[int],
    systems: tuple[str, ...] = WHO,
    recipe: str = RECIPE,
    overrides: list[str] | None = None,
    note: str | None = None,
    tag: str = "",
    sets: tuple[str, ...] = (),
    with_recorded: bool = False,
) -> None:
    """Rows of ``systems`` from the runs; ``recipe`` names the genrec row, ``overrides`` replaces the
    dataset's config overrides in its description (a run made with an earlier recipe says so), and
    ``note`` is added to the genrec row's notes. ``tag`` and ``sets`` name a variant's runs (``run
    --tag --set``): only its genrec rows are written, not marked headline. ``with_recorded`` adds
    the seeds that the results file already holds for a row (its per-seed numbers) to those
    collected now, so the seeds of one row can be run in different sittings."""
    name, data_overrides = DATASETS[dataset]
    overrides = (data_overrides if overrides is None else overrides) + list(sets)
    described = CONFIG + (" with " + " ".join(overrides) if overrides else "") + " (seed, sasrec.seed = S)"
    n_teachers = len(_teacher_folders(_run_dir(dataset, seeds[0], tag))) if tag else 1
    if tag:  # a variant's rows: its genrec, and its teacher when that is an ensemble of its own
        systems = ("genrec", "teacher") if n_teachers > 1 else ("genrec",)
    variant = f" --tag {tag} --set {' '.join(sets)}" if tag else ""
    rows = []
    for who in systems:
        for file, protocol, exclude in PROTOCOLS:
            evals, notes, minutes = [], [], []
            rd0 = _run_dir(dataset, seeds[0], tag)
            commands = _commands(rd0.parent / f"{rd0.name}.log")
            for seed in bar_seeds if who == "bar" else seeds:
                rd = _run_dir(dataset, seed, tag)
                if who == "genrec":
                    e = json.loads((rd / "eval" / file).read_text())
                    evals.append({**e["genrec"], "commit": e["commit"], "users": e["users"], "sample": _sample(e)})
                    info = json.loads((rd / "manifest.json").read_text())["stages"]
                    model = info["model"]
                    train = json.loads((rd / "train" / "checkpoint" / "state.json").read_text())
                    # the recipe's cost is its teacher's fits and its own training
                    minutes.append(round(train["minutes"] + sum(_fit_minutes(rd)), 1))
                    notes.append(
                        json.dumps(
                            {
                                "run": str(rd.relative_to(ROOT)),
                                "collisions": info["tokenize"].get("collision_rate"),
                                "train_steps": model.get("steps"),
                                "best_valid_ndcg@10": model.get("best_valid_ndcg@10"),
                                "valid_ndcg@10_by_step": {e["step"]: round(e["ndcg@10"], 4) for e in train["evals"]},
                                "valid_ndcg@10_by_minute": _by_minute(train["evals"], train["minutes"], train["step"]),
                                "decode_seconds_per_user": e["genrec"].get("seconds_per_user"),
                            }
                        )
                    )
                elif who == "teacher" and n_teachers > 1:
                    evals.append(json.loads((rd / "eval" / "teacher" / file).read_text()))
                    metas = [json.loads((f / "sasrec.json").read_text()) for f in _teacher_folders(rd)]
                    minutes.append(round(sum(_fit_minutes(rd)), 1))
                    notes.append(
                        f"seed {seed}: members' best epochs "
                        + ", ".join(f"{m['best_epoch']} of {m['epochs_run']}" for m in metas)
                        + f" (cap {metas[0]['config']['epochs']}, patience {metas[0]['config']['patience']})"
                    )
                elif who in ("teacher", "bar"):
                    folder = rd / "tokenize" / "collab_sasrec" if who == "teacher" else _bar_folder(dataset, seed)
                    e = json.loads((folder / f"metrics_test_all{'_xseen' if exclude else ''}.json").read_text())
                    meta = json.loads((folder / "sasrec.json").read_text())
                    evals.append(e)
                    minutes.append(round(meta["train_seconds"] / 60, 1))
                    curve = {h["minutes"]: h["ndcg@10"] for h in meta.get("valid_history", [])}
                    notes.append(
                        f"seed {seed}: best epoch {meta['best_epoch']} of {meta['epochs_run']} "
                        f"(cap {meta['config']['epochs']}, patience {meta['config']['patience']})"
                        + (f"; validation NDCG@10 by minute {json.dumps(curve)}" if curve else "")
                    )
                else:
                    e = json.loads(
                        (
                            rd / "baselines" / "popularity" / f"metrics_test{'_xseen' if exclude else ''}.json"
                        ).read_text()
                    )
                    evals.append(e)
                    minutes.append(0.0)  # counting items trains nothing worth a minute
            sample = evals[0].get("sample", "all")  # genrec's may be sampled; the baselines score everyone
            system = {
                "genrec": recipe,
                "teacher": f"SASRec-CE, ensemble of {n_teachers} seeds (the teacher of the {tag} variant)"
                if n_teachers > 1
                else "SASRec-CE, the recipe's teacher (fitted inside genrec tokenize)",
                "bar": f"SASRec-CE, converged (early stopping, {BAR_EPOCHS}-epoch cap)",
                "popularity": "popularity",
            }[who]
            if who == "popularity":  # deterministic: one row, whatever the seeds
                per_seed = [{"metrics": _metrics(evals[0]), "minutes": 0.0, "commit": _commit(evals[:1])}]
            else:
                per_seed = [
                    {"seed": s, "metrics": _metrics(e), "minutes": m, "commit": _commit([e]), "note": n}
                    for s, e, m, n in zip(bar_seeds if who == "bar" else seeds, evals, minutes, notes)
                ]
                if with_recorded:
                    per_seed = with_recorded_seeds(per_seed, (name, system, protocol, sample), described)
            seeds_in = [e["seed"] for e in per_seed if "seed" in e]
            command_seeds = " ".join(map(str, seeds_in))
            rows.append(
                {
                    "dataset": name,
                    "system": system,
                    "protocol": protocol,
                    "users": evals[0]["users"],
                    "user_sample": sample,
                    "seeds": seeds_in,
                    "metrics": {k: mean_sd([e["metrics"][k] for e in per_seed]) for k in per_seed[0]["metrics"]},
                    "minutes": mean_sd([e["minutes"] for e in per_seed]),
                    "commit": ", ".join(sorted({c for e in per_seed if e["commit"] for c in e["commit"].split(", ")}))
                    or None,
                    "cpu": _cpu(),
                    "config": described,
                    "published": False,
                    # a row named other than the recipe (a variant, a rerun beside one) is never a
                    # headline, nor one of fewer than three seeds (it becomes one as seeds join it)
                    "headline": who != "teacher"
                    and not tag
                    and (who != "genrec" or recipe == RECIPE)
                    and sample == "all"
                    and (who == "popularity" or len(seeds_in) >= HEADLINE_SEEDS),
                    "command": (
                        f"python bench/headline.py bar {dataset} --seeds {command_seeds}"
                        if who == "bar"
                        else f"python bench/headline.py run {dataset} --seeds {command_seeds}{variant}"
                        + (f" --max-users {evals[0]['users']}" if sample != "all" else "")
                        + "\n"
                        + f"# seed {seeds[0]}, as run:\n"
                        + "\n".join(commands)
                    ),
                    "notes": (
                        [
                            "minutes: the SASRec teacher fits (tokenize's, and train's for an ensemble) + genrec "
                            "train's clock (not data preparation, the k-means cut or evaluation).",
                            *([note] if note else []),
                        ]
                        if who == "genrec"
                        else ["minutes: the SASRec fits."]
                        if n_teachers > 1 and who == "teacher"
                        else ["minutes: the SASRec fit."]
                        if who in ("teacher", "bar")
                        else []
                    )
                    + [e["note"] for e in per_seed if "note" in e],
                    # each seed's own numbers, so a later collect can add seeds to this row (--with-recorded)
                    "per_seed": per_seed if who != "popularity" else [],
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
    for verb in ("run", "bar", "collect"):
        a = sub.add_parser(verb)
        a.add_argument("dataset", choices=sorted(DATASETS))
        a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        if verb == "collect":
            a.add_argument("--bar-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds `bar` fitted")
            a.add_argument(
                "--systems", nargs="+", choices=WHO, default=list(WHO), help="the rows to (re)write; others are kept"
            )
            a.add_argument("--recipe", default=RECIPE, help="the genrec row's name")
            a.add_argument("--overrides", nargs="*", help="the config overrides the runs were made with")
            a.add_argument("--note", help="a note for the genrec row")
            a.add_argument(
                "--with-recorded",
                action="store_true",
                help="add the seeds the results file already holds for each row (same config) to these",
            )
        if verb == "run":
            a.add_argument(
                "--max-users", type=int, default=0, help="evaluate genrec on this many sampled test users (0: all)"
            )
        if verb in ("run", "collect"):
            a.add_argument("--tag", default="", help="a variant of the recipe: its runs' name")
            a.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="the variant's config overrides")
    args = ap.parse_args()
    if (args.what != "bar") and bool(args.tag) != bool(args.set):
        ap.error("--tag and --set go together: a variant has a name and its overrides")
    if args.what == "collect":
        if args.tag and args.recipe == RECIPE:
            ap.error("name the variant's row with --recipe")
        collect(
            args.dataset,
            args.seeds,
            args.bar_seeds,
            tuple(args.systems),
            args.recipe,
            args.overrides,
            args.note,
            args.tag,
            tuple(args.set),
            args.with_recorded,
        )
    elif args.what == "run":
        run(args.dataset, args.seeds, args.tag, tuple(args.set), args.max_users)
    else:
        bar(args.dataset, args.seeds)


if __name__ == "__main__":
    main()
