"""bf16 autocast only where this CPU runs bf16 fast (genrec/precision.py).

On an AVX2-only CPU oneDNN emulates bf16: a matmul ran 44x slower than in fp32 and a training step
of the 4x128 scratch model 9x slower, so `bf16: true` must fall back to fp32 there.
"""

from __future__ import annotations

import time
import logging
from pathlib import Path

import pytest
import torch

from genrec import precision
from genrec.config import load_config
from genrec.runs import RunFolder
from genrec.training.trainer import Trainer

from conftest import TRAIN_BASE, copy_prepared

REPO = Path(__file__).resolve().parents[1]


def test_bf16_is_kept_only_when_it_is_not_much_slower():
    assert precision.prefer_bf16(0.5, 1.0)  # native bf16: about twice as fast
    assert precision.prefer_bf16(1.9, 1.0)
    assert not precision.prefer_bf16(44.0, 1.0)  # emulated (measured on an AVX2 EPYC)
    assert not precision.prefer_bf16(2.5, 1.0)


def test_probe_agrees_with_a_larger_matmul():
    # the cached probe times a 256^3 matmul; a 512^3 one must tell the same story unless the
    # two precisions are too close to call (then there is nothing to check here). Fastest of
    # seven, the precisions interleaved as the probe does, so that a burst of load on a busy
    # machine (the other test worker) slows both alike instead of deciding the ratio.
    mats = {d: (torch.randn(512, 512).to(d), torch.randn(512, 512).to(d)) for d in (torch.bfloat16, torch.float32)}
    best = dict.fromkeys(mats, float("inf"))
    for _ in range(7):
        for dtype, (a, b) in mats.items():
            a @ b  # warm: the first call of a shape may pick its kernel
            t = time.perf_counter()
            a @ b
            best[dtype] = min(best[dtype], time.perf_counter() - t)

    ratio = best[torch.bfloat16] / best[torch.float32]
    if 1.0 < ratio < 4.0:
        pytest.skip(f"bf16/fp32 ratio {ratio:.2f} is too close to the {precision.SLOWDOWN_LIMIT}x cut to compare")
    assert precision.cpu_bf16_is_fast() == (ratio <= precision.SLOWDOWN_LIMIT)


def test_use_bf16_follows_the_request_and_the_cpu(caplog):
    assert precision.use_bf16(False) is False
    precision._warn_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger="genrec.precision"):
        got = precision.use_bf16(True)
    assert got == precision.cpu_bf16_is_fast()
    fell_back = [r for r in caplog.records if "no fast bf16" in r.getMessage()]
    assert bool(fell_back) == (not got)


def test_training_records_the_precision_it_ran_in(demo_run, tmp_path):
    run = copy_prepared(demo_run, tmp_path / "run")
    cfg = load_config(
        TRAIN_BASE,
        [
            f"run_dir={run}",
            "model.name=scratch",
            "model.scratch_hidden=64",
            "model.scratch_layers=2",
            "model.scratch_intermediate=128",
            "train.finetune=full",
            "train.batch_size=8",
            "train.max_steps=2",
            "train.bf16=true",
            "train.eval_every=0",
            "train.save_every=0",
            "train.tasks={next_item: 1.0}",
            "data.max_history=8",
        ],
    )
    trainer = Trainer(cfg, progress=False)
    trainer.train()
    assert trainer.bf16 == precision.cpu_bf16_is_fast()
    assert RunFolder(run).stage_info("model")["bf16"] == trainer.bf16
