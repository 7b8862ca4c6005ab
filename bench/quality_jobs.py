"""Jobs of the quality benchmark, each leaving its numbers and their provenance in a run folder.

`bench/quality.py` only reads files; this script produces them, in the same harness as
`genrec evaluate` (same `split_rows` sampling, same `evaluate_rankings`):

    # genrec: train (timed) and evaluate on a fixed random subset of test users
    python bench/quality_jobs.py train configs/beauty-scratch.yaml [-s key=value ...]
    python bench/quality_jobs.py genrec-eval runs/beauty-scratch --max-users 2000 --seed 0
    # baselines, scored on ALL test users and on the same subset as the genrec rows
    python bench/quality_jobs.py sasrec configs/beauty-scratch.yaml --seed 0 --max-users 2000
    python bench/quality_jobs.py popularity configs/beauty-scratch.yaml --max-users 2000
    # a SASRec folder trained by `genrec baseline sasrec`, scored the same way
    python bench/quality_jobs.py sasrec-eval configs/beauty-scratch.yaml runs/beauty-scratch/baselines/sasrec-seed1 --max-users 2000

Why not only `genrec baseline sasrec`: it writes one fixed folder (RUN/baselines/sasrec), so
seeds overwrite each other, it samples its evaluation subset with the *model* seed (seed 1
would score different users than genrec's `--seed 0`), and it records no commit. Here each
seed gets RUN/baselines/sasrec-seedS/ with metrics on all users and on the subset, the
config, timings and `git rev-parse HEAD` (with -dirty when tracked files differ).

Files written (all JSON):
    RUN/bench/train.json                           genrec training: command, seconds, commit
    RUN/eval/test_u{N}_s{SEED}.json (+ .prov.json) genrec evaluation (N=0: all users)
    RUN/baselines/{name}/metrics_test_all.json     baseline on every test user
    RUN/baselines/{name}/metrics_test_u{N}_s{SEED}.json   baseline on the genrec subset
    RUN/baselines/{name}/provenance.json           config, seed, seconds, commit
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from genrec.config import load_config
from genrec.runs import git_commit


def _dirty_files() -> list[str]:
    """Tracked files that differ from the commit (why a commit carries -dirty)."""
    import subprocess
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent).stdout
    return [line[3:] for line in out.splitlines() if line.strip()]


# the code a job runs is the code at its start (others may commit while it runs)
_START_COMMIT, _START_DIRTY = git_commit(), _dirty_files()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _subset_name(max_users: int, seed: int, exclude_seen: bool = False) -> str:
    # seen-item exclusion gets its own files: the table's default protocol keeps seen items
    return ("all" if not max_users else f"u{max_users}_s{seed}") + ("_xseen" if exclude_seen else "")


def cmd_train(args) -> None:
    import yaml
    from genrec.training.trainer import Trainer
    cfg = load_config(args.config, args.set)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    started, t0 = _now(), time.perf_counter()
    state = Trainer(cfg).train()
    seconds = time.perf_counter() - t0
    _write(run / "bench" / "train.json", {
        "command": " ".join(sys.argv), "started": started, "finished": _now(), "seconds": round(seconds, 1),
        "steps": state.step, "best_step": state.best_step, "best_valid_ndcg@10": state.best_metric,
        "stop_reason": state.stop_reason, "commit": _START_COMMIT, "dirty_files": _START_DIRTY, "commit_at_end": git_commit()})
    print(f"trained {state.step} steps in {seconds / 60:.1f} min ({state.stop_reason})")


def cmd_genrec_eval(args) -> None:
    import torch
    from genrec.evaluation.evaluate import evaluate_run
    run = Path(args.run)
    started, t0 = _now(), time.perf_counter()
    result = evaluate_run(run, split="test", num_beams=args.num_beams, max_users=args.max_users, seed=args.seed,
                          batch_size=args.batch_size, exclude_seen=args.exclude_seen, progress=False)
    seconds = time.perf_counter() - t0
    name = _subset_name(args.max_users, args.seed, args.exclude_seen)
    shutil.copyfile(run / "eval" / "test.json", run / "eval" / f"test_{name}.json")
    _write(run / "eval" / f"test_{name}.prov.json", {
        "command": " ".join(sys.argv), "started": started, "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(), "commit": _START_COMMIT, "dirty_files": _START_DIRTY, "commit_at_end": git_commit()})
    print(json.dumps(result["genrec"], indent=2))


def _eval_baseline(recommend, dataset, max_users: int, seed: int, exclude_seen: bool = False) -> dict[str, dict]:
    from genrec.evaluation.evaluate import split_rows
    from genrec.evaluation.metrics import evaluate_rankings
    out = {}
    for mu in ([0, max_users] if max_users else [0]):
        _, histories, targets = split_rows(dataset, "test", mu, seed)
        out[_subset_name(mu, seed, exclude_seen)] = evaluate_rankings(recommend(histories), targets,
                                                                      dataset.n_items, ks=(5, 10))
    return out


def cmd_sasrec(args) -> None:
    import torch
    from genrec.data import PreparedDataset
    from genrec.evaluation.sasrec import SASRecRecommender
    cfg = load_config(args.config, args.set)
    scfg = replace(cfg.sasrec, seed=args.seed)
    dataset = PreparedDataset.load(Path(cfg.run_dir) / "data")
    started, t0 = _now(), time.perf_counter()
    rec = SASRecRecommender(scfg).fit(dataset, progress=not args.quiet)
    fit_s = time.perf_counter() - t0
    out = Path(cfg.run_dir) / "baselines" / f"sasrec-seed{args.seed}"
    rec.save(out)
    t1 = time.perf_counter()
    metrics = _eval_baseline(lambda h: rec.recommend(h, k=10), dataset, args.max_users, args.subset_seed)
    for name, m in metrics.items():
        _write(out / f"metrics_test_{name}.json", {**m, "split": "test", "exclude_seen": False})
    _write(out / "provenance.json", {
        "system": "SASRec (full-softmax CE)", "command": " ".join(sys.argv), "started": started,
        "train_seconds": round(fit_s, 1), "eval_seconds": round(time.perf_counter() - t1, 1),
        "best_epoch": rec.best_epoch, "best_valid_ndcg@10": rec.best_valid_ndcg, "seed": args.seed,
        "threads": torch.get_num_threads(), "config": asdict(scfg), "commit": _START_COMMIT, "dirty_files": _START_DIRTY, "commit_at_end": git_commit()})
    print(json.dumps(metrics, indent=2))


def cmd_sasrec_eval(args) -> None:
    """Score a SASRec folder trained elsewhere (`genrec baseline sasrec`) in this harness."""
    import torch
    from genrec.data import PreparedDataset
    from genrec.evaluation.sasrec import SASRecRecommender
    cfg = load_config(args.config, args.set)
    folder = Path(args.folder)
    rec = SASRecRecommender.load(folder)
    trained = _json_or_empty(folder / "metrics_test.json")      # what `genrec baseline sasrec` recorded
    dataset = PreparedDataset.load(Path(cfg.run_dir) / "data")
    t1 = time.perf_counter()
    metrics = _eval_baseline(lambda h: rec.recommend(h, k=10, exclude_seen=args.exclude_seen), dataset,
                             args.max_users, args.subset_seed, args.exclude_seen)
    for name, m in metrics.items():
        _write(folder / f"metrics_test_{name}.json", {**m, "split": "test", "exclude_seen": args.exclude_seen})
    if args.exclude_seen and (folder / "provenance.json").is_file():
        print(json.dumps(metrics, indent=2))   # extra files next to a folder that already has its provenance
        return
    _write(folder / "provenance.json", {
        "system": "SASRec (full-softmax CE)", "command": " ".join(sys.argv),
        "trained_by": "genrec baseline sasrec (see metrics_test.json)" if trained else "bench/quality_jobs.py sasrec",
        "train_seconds": trained.get("train_seconds", 0.0), "eval_seconds": round(time.perf_counter() - t1, 1),
        "best_epoch": trained.get("best_epoch"), "best_valid_ndcg@10": trained.get("best_valid_ndcg@10"),
        "seed": (trained.get("config") or {}).get("seed"), "threads": torch.get_num_threads(),
        "config": trained.get("config"), "commit": trained.get("commit", _START_COMMIT),
        "eval_commit": _START_COMMIT, "dirty_files": _START_DIRTY})
    print(json.dumps(metrics, indent=2))


def _json_or_empty(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def cmd_popularity(args) -> None:
    from genrec.data import PreparedDataset
    from genrec.evaluation.baselines import PopularityRecommender
    cfg = load_config(args.config, args.set)
    dataset = PreparedDataset.load(Path(cfg.run_dir) / "data")
    index = dataset.item_index()
    t0 = time.perf_counter()
    pop = PopularityRecommender(args.exclude_seen).fit(
        [[index[i] for i in s] for s in dataset.train_sequences().values()], dataset.n_items)
    metrics = _eval_baseline(lambda h: pop.recommend(h, 10), dataset, args.max_users, args.subset_seed)
    name = "popularity-exclude-seen" if args.exclude_seen else "popularity"
    out = Path(cfg.run_dir) / "baselines" / name
    for sub, m in metrics.items():
        _write(out / f"metrics_test_{sub}.json", {**m, "split": "test", "exclude_seen": args.exclude_seen})
    _write(out / "provenance.json", {
        "system": "popularity (training counts" + (", seen items excluded)" if args.exclude_seen
                                                   else ", seen items not excluded)"),
        "command": " ".join(sys.argv), "train_seconds": 0.0, "eval_seconds": round(time.perf_counter() - t0, 1),
        "seed": None, "commit": _START_COMMIT, "dirty_files": _START_DIRTY, "commit_at_end": git_commit()})
    print(json.dumps(metrics, indent=2))


def cmd_copy_stages(args) -> None:
    """Start a run folder from another run's data/ and tokenize/ (not its model), so ablations that only
    change training reuse the same split and semantic IDs instead of rebuilding them."""
    import shutil
    src, dst = Path(args.src), Path(args.dst)
    if (dst / "tokenize").exists():
        print(f"{dst} already holds tokenize/: left as it is")
        return
    dst.mkdir(parents=True, exist_ok=True)
    for stage in ("data", "tokenize"):
        shutil.copytree(src / stage, dst / stage)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["stages"].pop("model", None)
    _write(dst / "manifest.json", manifest)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("config")
    t.add_argument("-s", "--set", action="append", default=[])
    e = sub.add_parser("genrec-eval")
    e.add_argument("run")
    e.add_argument("--max-users", type=int, default=0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--num-beams", type=int, default=20)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--exclude-seen", action="store_true", help="never recommend history items (files *_xseen)")
    for name in ("sasrec", "popularity", "sasrec-eval"):
        b = sub.add_parser(name)
        b.add_argument("config")
        if name == "sasrec-eval":
            b.add_argument("folder", help="a trained SASRec folder (model.pt + sasrec.json)")
        b.add_argument("-s", "--set", action="append", default=[])
        b.add_argument("--max-users", type=int, default=0, help="also score this subset (genrec's)")
        b.add_argument("--subset-seed", type=int, default=0, help="seed of the subset (genrec evaluate --seed)")
        if name == "sasrec":
            b.add_argument("--seed", type=int, default=0)
            b.add_argument("--quiet", action="store_true")
        else:
            b.add_argument("--exclude-seen", action="store_true")
    c = sub.add_parser("copy-stages")
    c.add_argument("src")
    c.add_argument("dst")
    args = p.parse_args(argv)
    {"train": cmd_train, "genrec-eval": cmd_genrec_eval, "sasrec": cmd_sasrec, "sasrec-eval": cmd_sasrec_eval,
     "popularity": cmd_popularity, "copy-stages": cmd_copy_stages}[args.cmd](args)


if __name__ == "__main__":
    main()
