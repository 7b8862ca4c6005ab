"""The quality table's collector (bench/quality.py) keeps every row it computes, so a table
regenerated on a machine without the run folders still holds the measured rows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import yaml

from conftest import REPO, copy_prepared

sys.path.insert(0, str(REPO / "bench"))
import quality  # noqa: E402  (bench/ is scripts, not a package)


def test_rows_outlive_their_run_folders(demo_run, tmp_path, monkeypatch):
    run = copy_prepared(demo_run, tmp_path / "runs" / "demo")
    cfg = tmp_path / "demo.yaml"
    cfg.write_text((REPO / "configs" / "demo.yaml").read_text().replace("run_dir: runs/demo", f"run_dir: {run}"))
    subprocess.run([sys.executable, str(REPO / "bench" / "quality_jobs.py"), "popularity", str(cfg),
                    "--max-users", "500"], check=True, capture_output=True, cwd=REPO)
    spec = {"title": "t", "dataset": "Demo", "rows": [
        {"kind": "published", "system": "paper", "ndcg@10": 0.5},
        {"kind": "baseline", "system": "popularity", "config": "training counts",
         "runs": [str((run / "baselines" / "popularity").relative_to(tmp_path))], "eval": ["all", "u500_s0"]}]}
    (tmp_path / "rows.yaml").write_text(yaml.safe_dump(spec))
    store = tmp_path / "kept.json"
    argv = ["--runs", str(tmp_path / "rows.yaml"), "--out", str(tmp_path / "t.md"), "--plot", str(tmp_path / "t.png"),
            "--store", str(store)]
    monkeypatch.setattr(quality, "ROOT", tmp_path)   # row folders are relative to the repository root
    quality.main(argv)
    first = (tmp_path / "t.md").read_text()
    metrics = json.loads((run / "baselines" / "popularity" / "metrics_test_all.json").read_text())
    assert f"| {metrics['ndcg@10']:.4f} |" in first
    kept = json.loads(store.read_text())
    assert set(kept) == {"Demo | popularity | all", "Demo | popularity | u500_s0"}

    shutil.rmtree(run)               # a fresh machine: no runs/, only the committed record
    quality.main(argv)
    again = (tmp_path / "t.md").read_text()
    assert "2 of these rows were read from" in again
    note = again[again.index("2 of these rows"):].split("\n")[0]
    assert again == first + "\n" + note + "\n"          # the same rows, cell for cell, and the note
    assert json.loads(store.read_text()) == kept   # reading does not rewrite the record
    # a row neither measured nor recorded is still an error
    spec["rows"][1]["eval"].append("u9_s9")
    (tmp_path / "rows.yaml").write_text(yaml.safe_dump(spec))
    try:
        quality.main(argv)
    except SystemExit as e:
        assert "metrics_test_u9_s9.json" in str(e)
    else:
        raise AssertionError("a missing row without a record must fail")
