"""The demo: its verdict comes from the metrics files, and it runs end to end, serving included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, copy_prepared
from genrec.config import load_config
from genrec.demo import SASREC_SHARE, VERDICT_METRICS, choose_config, run_demo, verdict


def _write(folder: Path, name: str, **metrics: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"users": 100, **metrics}))


def test_verdict_is_computed_from_the_metrics_files(tmp_path):
    base = dict.fromkeys(VERDICT_METRICS, 0.10)
    _write(tmp_path, "genrec", **{**base, "ndcg@10": 0.095})
    _write(tmp_path, "popularity", **dict.fromkeys(VERDICT_METRICS, 0.05))
    _write(tmp_path, "sasrec", **{**base, "ndcg@10": 0.100})
    v = verdict(tmp_path)
    assert v["beats_popularity_on_all"] and v["reaches_sasrec_share"]
    assert v["share_of_sasrec_ndcg@10"] == pytest.approx(0.95)
    # the same code says no when the files say no
    _write(tmp_path, "popularity", **{**dict.fromkeys(VERDICT_METRICS, 0.05), "recall@5": 0.2})
    _write(tmp_path, "sasrec", **{**base, "ndcg@10": 0.095 / (SASREC_SHARE - 0.01)})
    v = verdict(tmp_path)
    assert v["beats_popularity"] == {"recall@5": False, "recall@10": True, "ndcg@5": True, "ndcg@10": True}
    assert not v["beats_popularity_on_all"] and not v["reaches_sasrec_share"]


def test_cpu_machines_get_the_compact_recipe():
    import torch

    path, why = choose_config(REPO)
    assert path.is_file()
    assert path.name == ("demo-smollm2.yaml" if torch.cuda.is_available() else "demo.yaml") and why


@pytest.mark.slow
def test_demo_runs_end_to_end_and_serves(demo_run, tmp_path, capsys):
    run = copy_prepared(demo_run, tmp_path / "demo")
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"run_dir={run}",
            "tokenize.embedding.source=text",
            "model.scratch_layers=2",
            "model.scratch_hidden=64",
            "model.scratch_intermediate=128",
            "train.max_steps=20",
            "train.max_minutes=0",
            "train.eval_every=10",
            "train.eval_users=50",
            "train.distill_weight=0",
            "train.distill_from=null",
            "sasrec.epochs=2",
            "sasrec.hidden=32",
            "eval.max_users=150",
            "eval.num_beams=10",
            "train.num_threads=1",
            "sasrec.num_threads=1",
        ],
    )
    result = run_demo(cfg, "configs/demo.yaml", serve=True)
    out = capsys.readouterr().out
    # what was printed and saved is what the metrics files say
    assert json.loads((run / "demo" / "verdict.json").read_text()) == verdict(run / "demo") == result
    assert result["users"] == 150 and result["metrics"]["genrec"]["invalid_rate"] == 0.0
    assert f"{result['share_of_sasrec_ndcg@10']:.0%} of SASRec-CE's NDCG@10" in out
    assert (run / "train" / "curve.png").stat().st_size > 5000
    assert "POST /v1/recommendations" in out and "answer:" in out and "server stopped" in out
