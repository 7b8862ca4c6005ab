"""Quality benchmark table: genrec runs and baselines side by side, from files in run folders.

    .venv/bin/python bench/quality.py                      # rows from bench/quality_runs.yaml
    .venv/bin/python bench/quality.py --runs bench/quality_runs.yaml --out bench/results/quality.md

Every measured number is read from a run folder (nothing is recomputed here):

* genrec rows (`kind: genrec`): RUN/eval/test_{EVAL}.json (written by `genrec evaluate` and
  copied by `bench/quality_jobs.py genrec-eval`), RUN/eval/test_{EVAL}.prov.json (eval time,
  commit), RUN/bench/train.json (train time, commit), RUN/config.yaml, RUN/manifest.json;
* baseline rows (`kind: baseline`): RUN/baselines/NAME/metrics_test_{EVAL}.json and
  RUN/baselines/NAME/provenance.json (`bench/quality_jobs.py sasrec|popularity`);
* `kind: published` rows are typed into the YAML and marked "published, not run here".

Several folders in one row (seeds) give mean ± sample standard deviation. The markdown goes
to bench/results/quality.md (with the YAML's `commands` block at its top) and a bar plot
to bench/results/quality.png.

Run folders live under the ignored `runs/` and do not outlive the machine they were made on,
so every row computed from its folders is also written, formatted, to the committed
bench/results/quality_rows.json (key: dataset | system | eval subset). A row whose folders
are missing is read back from there, exactly as it was printed, and the table says which
rows came from that record; only a row that is in neither place is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "bench" / "results" / "quality_rows.json"


class Missing(Exception):
    """A file a row needs is not there (its job did not run or did not finish)."""


def _json(path: Path) -> dict:
    if not path.is_file():
        raise Missing(f"missing {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return json.loads(path.read_text())


def _short(commit: str | None) -> str:
    if not commit:
        return "?"
    dirty = commit.endswith("-dirty")
    return commit[:7] + ("-dirty" if dirty else "")


def _train_info(run: Path) -> dict:
    """RUN/bench/train.json (quality_jobs.py train), else the wall-clock stamps that the shell
    wrapper around `genrec train` wrote (RUN/train.start/.end, unix seconds) + RUN/train/state.json."""
    if (run / "bench" / "train.json").is_file():
        return _json(run / "bench" / "train.json")
    start, end = (int((run / f"train.{x}").read_text().split()[0]) for x in ("start", "end"))
    state = _json(run / "train" / "state.json")
    model = _json(run / "manifest.json")["stages"]["model"]
    return {"seconds": end - start, "steps": state["step"], "best_step": state["best_step"],
            "commit": model.get("commit")}


def _window_count(run: Path, span: int) -> int:
    """next_item examples per epoch under `train.next_item_examples: windows` (prompts.py)."""
    from genrec.data import PreparedDataset
    from genrec.training.prompts import next_item_pairs
    return len(next_item_pairs(list(PreparedDataset.load(run / "data").train_sequences().values()), "windows", span))


def _genrec_run(run: Path, eval_name: str) -> dict:
    res = _json(run / "eval" / f"test_{eval_name}.json")
    prov = _json(run / "eval" / f"test_{eval_name}.prov.json")
    train = _train_info(run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    manifest = _json(run / "manifest.json")["stages"]
    m = res["genrec"]
    commits = {train.get("commit"), prov.get("commit"), manifest["model"].get("commit"),
               manifest["tokenize"].get("commit")}
    report = _json(run / "tokenize" / "report.json")
    stats = _json(run / "data" / "stats.json")
    log = [json.loads(line) for line in (run / "train" / "log.jsonl").read_text().splitlines() if line.strip()]
    valid = [(e["step"], e["valid"]["ndcg@10"]) for e in log if "valid" in e]
    losses = [(e["step"], e["loss"]) for e in log if "loss" in e]
    pairs = stats["train_interactions"] - stats["users"]  # next-item examples per epoch (every prefix)
    if cfg["train"].get("next_item_examples") == "windows":
        pairs = _window_count(run, cfg["data"]["max_history"])
    details = {"run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
               "quantizer": cfg["tokenize"]["quantizer"]["method"], "source": cfg["tokenize"]["embedding"]["source"],
               "collision_rate": report["collision_rate"], "largest_group": report.get("largest_group"),
               "levels": [lv["size"] for lv in report["levels"]],
               "steps": train["steps"], "epochs": train["steps"] * cfg["train"]["batch_size"] / pairs,
               "best_step": train["best_step"], "valid_ndcg10": valid,
               "loss_first_last": (losses[0], losses[-1]) if losses else None,
               "loss_tail_mean": (sum(l for _, l in losses[-10:]) / len(losses[-10:])) if losses else None,
               "beams": res["num_beams"], "eval_s_per_user": m.get("seconds_per_user")}
    return {"metrics": {k: m[k] for k in METRICS}, "invalid": m["invalid_rate"], "users": res["users"],
            "details": details, "minutes": (train["seconds"] + prov["seconds"]) / 60, "seed": cfg["seed"],
            "commits": sorted(_short(c) for c in commits if c), "beams": res["num_beams"],
            "exclude_seen": res["exclude_seen"], "steps": train["steps"], "best_step": train["best_step"],
            "train_min": train["seconds"] / 60, "eval_min": prov["seconds"] / 60}


def _baseline_run(folder: Path, eval_name: str) -> dict:
    m = _json(folder / f"metrics_test_{eval_name}.json")
    prov = _json(folder / "provenance.json")
    minutes = (prov.get("train_seconds", 0.0) + prov.get("eval_seconds", 0.0)) / 60
    return {"metrics": {k: m[k] for k in METRICS}, "invalid": m["invalid_rate"], "users": m["users"],
            "minutes": minutes, "seed": prov.get("seed"), "commits": [_short(prov.get("commit"))],
            "exclude_seen": m.get("exclude_seen"), "best_epoch": prov.get("best_epoch")}


def _fmt(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def row_key(dataset: str, system: str, eval_name: str | None) -> str:
    """The row's key in the kept record (bench/results/quality_rows.json)."""
    return f"{dataset} | {system} | {eval_name or 'published'}"


def _detail_line(d: dict) -> str:
    curve = ", ".join(f"{s_}: {v:.4f}" for s_, v in d["valid_ndcg10"])
    loss = (f"{d['loss_first_last'][0][1]:.2f} -> {d['loss_tail_mean']:.2f}" if d["loss_first_last"] else "-")
    return (f"| {d['run']} | {d['quantizer']} over {d['source']}, levels {d['levels']} | "
            f"{d['collision_rate']:.2%} (largest group {d['largest_group']}) | {d['steps']} "
            f"({d['epochs']:.2f}) | {curve} | {loss} | {d['beams']} | {d['eval_s_per_user']:.3f} |")


def collect(spec: dict, base: Path, strict: bool = True, skipped: list | None = None,
            store: dict | None = None) -> list[dict]:
    """One dict per table row: label columns and formatted metric cells.

    ``store`` is the kept record ({row_key: row}): rows computed from run folders are written
    into it, rows whose folders are missing are read from it (marked ``kept``).
    """
    rows = []
    skipped = [] if skipped is None else skipped
    for entry in spec["rows"]:
        kind = entry["kind"]
        dataset = entry.get("dataset", spec["dataset"])
        if kind == "published":
            rows.append({"dataset": dataset,
                         "system": entry["system"] + " (published, not run here)",
                         "config": entry.get("config", ""), "seeds": "-", "users": "-", "minutes": "-",
                         "commit": "-", "invalid": "-", "published": True,
                         "cells": {k: (_fmt([entry[k]]) if k in entry else "-") for k in METRICS}})
            continue
        for eval_name in entry["eval"]:
            key = row_key(dataset, entry["system"], eval_name)
            runs = []
            try:
                for folder in entry["runs"]:
                    path = (base / folder).resolve()
                    runs.append(_genrec_run(path, eval_name) if kind == "genrec" else _baseline_run(path, eval_name))
            except Missing as e:
                if store is not None and key in store:
                    rows.append({**store[key], "kept": True})
                    continue
                if strict:
                    raise SystemExit(f"{e}: run the job that writes it (see bench/quality_jobs.py), or --skip-missing")
                skipped.append(f"{entry['system']} [{eval_name}]: {e}")
                continue
            users = sorted({r["users"] for r in runs})
            seeds = [r["seed"] for r in runs]
            row = {
                "dataset": dataset, "system": entry["system"],
                "config": entry.get("config", "") + "".join(
                    f"; best epoch {r['best_epoch']}" for r in runs if r.get("best_epoch")),
                "seeds": ",".join("-" if s is None else str(s) for s in seeds),
                "users": "/".join(f"{u:,}" for u in users),
                "minutes": _fmt([r["minutes"] for r in runs], 1),
                "commit": ", ".join(sorted({c for r in runs for c in r["commits"]})),
                "invalid": _fmt([r["invalid"] for r in runs], 3), "published": False,
                # formatted here once, so that a row read back from the record prints the same
                "cells": {k: _fmt([r["metrics"][k] for r in runs]) for k in METRICS},
                "values": {k: [r["metrics"][k] for r in runs] for k in METRICS},
                "subset": eval_name,
                "details": [_detail_line(r["details"]) for r in runs if r.get("details")]}
            if store is not None:
                store[key] = row
            rows.append(row)
    return rows


def markdown(spec: dict, rows: list[dict]) -> str:
    out = [f"# {spec.get('title', 'Quality benchmark')}", ""]
    if spec.get("commands"):
        out += ["Commands (from the repository root; every heavy job with `OMP_NUM_THREADS=1 MKL_NUM_THREADS=1`):",
                "", "```bash", spec["commands"].rstrip(), "```", ""]
    if spec.get("notes_before"):
        out += [spec["notes_before"].rstrip(), ""]
    head = ["dataset", "system", "config", "seeds", "eval users", "R@5", "R@10", "N@5", "N@10", "invalid rate",
            "train+eval min", "commit"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [r["cells"][k] for k in METRICS]
        out.append("| " + " | ".join([r["dataset"], r["system"], r["config"], r["seeds"], r["users"], *vals,
                                      r["invalid"], r["minutes"], r["commit"]]) + " |")
    out.append("")
    out.append("Several seeds: mean ± sample standard deviation over the seeds. R = Recall (= HitRate with one "
               "target), N = NDCG; leave-last-out, full ranking over the catalog, "
               "`genrec/evaluation/metrics.py` for every measured row.")
    kept = [r for r in rows if r.get("kept")]
    if kept:
        out += ["", f"{len(kept)} of these rows were read from `bench/results/quality_rows.json`, the record "
                "this script keeps of every row it computed: their run folders (under the ignored `runs/`) "
                "were not on the machine that regenerated the table. Rerun a row's commands to measure it anew."]
    det = [line for r in rows for line in r.get("details", [])]
    if det:
        out += ["", "genrec runs, read from the same folders (IDs: RUN/tokenize/report.json; training: "
                "RUN/train/log.jsonl, validation = sampled valid users (train.eval_users), beam as in the config):", "",
                "| run | IDs | collisions before disambiguation | steps (epochs of next-item examples) | "
                "validation NDCG@10 by step | train loss (first -> mean of last 10 logs; with history loss: "
                "answer + history terms) | test beam | eval s/user |",
                "|---|---|---|---|---|---|---|---|"]
        out += det
    if spec.get("notes"):
        out += ["", spec["notes"].rstrip()]
    return "\n".join(out) + "\n"


def _cell_value(cell: str) -> tuple[float, float]:
    """(mean, sd) of a formatted cell: "0.0405 ± 0.0009", "0.0192" or "-" (0, 0)."""
    if cell == "-":
        return 0.0, 0.0
    mean, _, sd = cell.partition(" ± ")
    return float(mean), float(sd or 0.0)


def plot(rows: list[dict], path: Path, dataset: str) -> None:
    """Horizontal bars, one row of the table each (table order, top to bottom): NDCG@10 and Recall@10
    with the seed spread; published rows hatched, the baselines' rows in grey."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    labels = []
    for r in rows:
        lab = r["system"].replace(" (published, not run here)", " (published)").replace("**", "")
        if not r["published"]:
            lab += f" [{r['users']} users]"
        labels.append(lab if len(lab) <= 110 else lab[:107] + "...")
    y = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(20, 0.28 * len(rows) + 1.5), sharey=True)
    for ax, key, title in zip(axes, ("ndcg@10", "recall@10"), ("NDCG@10", "Recall@10")):
        means, errs = zip(*(_cell_value(r["cells"][key]) for r in rows))
        colors = ["#9e9e9e" if ("SASRec" in r["system"] or "popularity" in r["system"]) else "#1f77b4" for r in rows]
        bars = ax.barh(y, means, xerr=[e if e else 0 for e in errs], color=colors, edgecolor="black", linewidth=0.4,
                       capsize=2)
        for bar, r in zip(bars, rows):
            if r["published"]:
                bar.set_hatch("//")
                bar.set_facecolor("white")
        ax.set_title(f"{dataset}: test {title} (leave-last-out, full ranking)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=7)
    axes[0].invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Collect the quality benchmark table from run folders.")
    p.add_argument("--runs", default=str(ROOT / "bench" / "quality_runs.yaml"), help="YAML list of rows.")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.md"))
    p.add_argument("--plot", default=str(ROOT / "bench" / "results" / "quality.png"))
    p.add_argument("--store", default=str(STORE), help="kept record of computed rows (JSON)")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out rows whose files are missing and that the record does not hold")
    args = p.parse_args(argv)
    spec = yaml.safe_load(Path(args.runs).read_text())
    store_path = Path(args.store)
    store = json.loads(store_path.read_text()) if store_path.is_file() else {}
    skipped: list[str] = []
    rows = collect(spec, ROOT, strict=not args.skip_missing, skipped=skipped, store=store)
    text = markdown(spec, rows)
    if skipped:
        text += "\nRows not in the table (their jobs did not finish):\n\n" + "".join(f"- {x}\n" for x in skipped)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = store_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")
    tmp.replace(store_path)   # never half a record: it holds rows no run folder can give back
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    # the plot shows the main dataset's rows (one chart, one catalog); other datasets are in the table
    plot([r for r in rows if r["dataset"] == spec["dataset"]], Path(args.plot), spec["dataset"])
    print(text)


if __name__ == "__main__":
    main()
