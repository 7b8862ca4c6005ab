"""Training under torchrun: 2 CPU processes with the gloo backend must end with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, TRAIN_BASE, copy_prepared


@pytest.mark.slow
def test_two_gloo_ranks_agree(demo_run, tmp_path):
    run = copy_prepared(demo_run, tmp_path / "ddp")
    overrides = [
        f"run_dir={run}",
        "model.name=scratch",
        "model.scratch_hidden=64",
        "model.scratch_layers=2",
        "model.scratch_intermediate=128",
        "train.finetune=full",
        "train.max_steps=3",
        "train.batch_size=8",
        "train.bf16=false",
        "train.eval_users=20",
        "train.eval_every=0",
        "train.tasks={next_item: 1.0}",
        "eval.num_beams=5",
        "eval.top_k=5",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "genrec.cli",
        "train",
        str(TRAIN_BASE),
    ]
    for o in overrides:
        cmd += ["-s", o]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = [(run / "train" / f"weights.rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    # rank 0 alone evaluated, checkpointed and exported
    assert (run / "model" / "config.json").is_file()
