"""RecBole's SASRec (CE loss, full ranking) on genrec's own split, beside genrec's SASRec-CE.

    python bench/recbole_parity.py RUN [--epochs 15 --seed 0 --threads 2]

RUN is a prepared genrec run (RUN/data, from `genrec data prepare`). Its chronological user
sequences are written as a RecBole atomic file (each user's items in order; the position is the
timestamp), and RecBole 1.2.1 splits them leave-one-out by time (`LS: valid_and_test`, `TO`):
the same validation and test targets as genrec. RecBole ranks the full catalog and masks the
items a user already has, i.e. genrec's "seen items excluded" protocol.

RecBole is a benchmark tool here, not a dependency: it lives in its own virtual environment,
`.venv-recbole` (created on first use: the CPU torch wheel and recbole==1.2.1). Two patches
make 1.2.1 run on torch 2.13: `weights_only=False` in its `torch.load` calls (torch's new
default refuses its checkpoints), and `recbole/model/sequential_recommender/sine.py` no longer
switches on autograd anomaly detection at import (it slows every model's backward several
times).

Prints RecBole's validation and test Recall@10 / NDCG@10 beside the SASRec-CE rows of
bench/results/results.jsonl for the same dataset, and writes bench/results/recbole_parity.json
with the command, CPU and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import _cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-recbole"
RESULTS = ROOT / "bench" / "results" / "recbole_parity.json"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- recbole:begin (bench/recbole_parity.py) -->", "<!-- recbole:end -->"
#: RecBole 1.2.1 imports ray 2.6, which needs pkg_resources (gone from setuptools 81) and numpy 1.x
PACKAGES = ["torch==2.13.0", "recbole==1.2.1", "setuptools>=77,<81", "numpy<2", "pandas<2.3"]

#: RecBole's SASRec with the settings its own SASRec-CE results use, at genrec's width
RECBOLE_CONFIG = {
    "USER_ID_FIELD": "user_id",
    "ITEM_ID_FIELD": "item_id",
    "TIME_FIELD": "timestamp",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "MAX_ITEM_LIST_LENGTH": 50,
    "loss_type": "CE",
    "train_neg_sample_args": None,
    "n_layers": 2,
    "n_heads": 2,
    "hidden_size": 64,
    "inner_size": 256,
    "hidden_dropout_prob": 0.5,
    "attn_dropout_prob": 0.5,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "initializer_range": 0.02,
    "learning_rate": 0.001,
    "train_batch_size": 256,
    "eval_batch_size": 4096,
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
    "metrics": ["Recall", "NDCG"],
    "topk": [10],
    "valid_metric": "NDCG@10",
    "stopping_step": 10,
    "device": "cpu",
    "use_gpu": False,
    "show_progress": False,
    "reproducibility": True,
}

RUNNER = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[2]))
from recbole.quick_start import run_recbole
config = json.loads(open(sys.argv[1]).read())
out = run_recbole(model="SASRec", dataset="genrec", config_dict=config)
print("RESULT " + json.dumps({k: (dict(v) if hasattr(v, "items") else v) for k, v in out.items()}))
"""


def ensure_venv() -> Path:
    """RecBole's own environment, created and patched once."""
    python = VENV / "bin" / "python"
    if not (VENV / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True)
        (VENV / ".installed").write_text(" ".join(PACKAGES) + "\n")
    site = next((VENV / "lib").glob("python*/site-packages/recbole"))
    for path in site.rglob("*.py"):
        text = path.read_text()
        patched = re.sub(r"torch\.load\(([^)]*?)\)", _weights_only, text)
        patched = patched.replace("torch.autograd.set_detect_anomaly(True)", "pass  # genrec bench: off")
        if patched != text:
            path.write_text(patched)
    return python


def _weights_only(match: re.Match) -> str:
    args = match.group(1)
    return match.group(0) if "weights_only" in args else f"torch.load({args}, weights_only=False)"


def write_atomic(run: Path, folder: Path) -> int:
    """RUN/data's sequences as folder/genrec/genrec.inter; the number of interactions."""
    from genrec.data import PreparedDataset

    ds = PreparedDataset.load(run / "data")
    (folder / "genrec").mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user, items in zip(ds.sequences["user_id"], ds.sequences["items"]):
        lines += [f"{user}\t{item}\t{t}" for t, item in enumerate(items)]
    (folder / "genrec" / "genrec.inter").write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def ours(dataset: str) -> list[dict]:
    """genrec's SASRec-CE rows for ``dataset`` from the results file."""
    rows = [json.loads(line) for line in (ROOT / "bench/results/results.jsonl").read_text().splitlines() if line]
    return [r for r in rows if r["dataset"] == dataset and r["system"].startswith("SASRec-CE")]


def main() -> None:
    from genrec.runs import git_commit

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dataset", default="Beauty", help="Dataset name of genrec's rows to print beside.")
    args = ap.parse_args()
    python = ensure_venv()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        n = write_atomic(args.run, Path(tmp))
        config = {
            **RECBOLE_CONFIG,
            "data_path": tmp,
            "epochs": args.epochs,
            "seed": args.seed,
            "checkpoint_dir": str(Path(tmp) / "saved"),
        }
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        (Path(tmp) / "runner.py").write_text(RUNNER)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        res = subprocess.run(
            [str(python), str(Path(tmp) / "runner.py"), str(Path(tmp) / "config.json"), str(args.threads)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
        )
    line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
    if res.returncode or line is None:
        raise SystemExit("RecBole failed:\n" + res.stdout[-3000:] + res.stderr[-3000:])
    out = json.loads(line[len("RESULT ") :])
    row = {
        "dataset": args.dataset,
        "system": "RecBole 1.2.1 SASRec (CE, 2 layers, 2 heads, 64 wide, FFN 256, dropout 0.5)",
        "protocol": "seen items excluded",
        "interactions": n,
        "epochs": args.epochs,
        "seed": args.seed,
        "best_valid": out.get("best_valid_result"),
        "test": out.get("test_result"),
        "minutes": round((time.time() - t0) / 60, 1),
        "command": "python " + " ".join(sys.argv),
        "cpu": _cpu(),
        "commit": git_commit(ROOT),
    }
    RESULTS.write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row, indent=2))
    table = docs_table(row, ours(args.dataset))
    text = DOCS.read_text()
    if BEGIN in text:
        DOCS.write_text(text[: text.index(BEGIN)] + table + text[text.index(END) + len(END) :])
    print("\n" + table)


def docs_table(row: dict, theirs: list[dict]) -> str:
    """RecBole's test row beside genrec's SASRec-CE rows, as the docs show it."""
    lines = [
        BEGIN,
        "",
        f"`{row['command']}` ({row['cpu']}, commit {row['commit'][:7]}"
        f"{'-dirty' if str(row['commit']).endswith('-dirty') else ''}; {row['minutes']} min):",
        "",
        "| system | protocol | users | seeds | Recall@10 | NDCG@10 |",
        "|---|---|---:|---:|---:|---:|",
        f"| {row['system']}, {row['epochs']} epochs | {row['protocol']} | all | {row['seed']} | "
        f"{row['test']['recall@10']:.4f} | {row['test']['ndcg@10']:.4f} |",
    ]
    for r in theirs:
        if r["users"] is None or "recall@10" not in r["metrics"]:
            continue  # published numbers: docs/results.md lists them
        m = r["metrics"]
        lines.append(
            f"| genrec {r['system']} | {r['protocol']} | {r['users']:,} | {len(r['seeds'])} | "
            f"{m['recall@10']['mean']:.4f} | {m['ndcg@10']['mean']:.4f} |"
        )
    return "\n".join(lines + ["", END])


if __name__ == "__main__":
    main()
