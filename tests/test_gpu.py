"""genrec on a GPU: ``device: auto`` moves the SASRec fit, training, its teacher and decoding there.

The first two tests run everywhere (device names are checked; a GPU asked for where torch sees
none is a clear error). The others need CUDA and skip without it: the demo recipe, shrunk,
runs on the GPU from data preparation to evaluation, resumes on the CPU from a GPU checkpoint,
and its teacher and its decoding agree with the CPU's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import wait_ready

from genrec.config import load_config
from genrec.errors import InputError
from genrec.precision import compute_device

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

#: the demo recipe, small enough for a test: a 3-epoch teacher, 30 steps of a 2x64 student
SMALL = [
    "sasrec.epochs=3",
    "model.scratch_hidden=64",
    "model.scratch_layers=2",
    "model.scratch_intermediate=128",
    "train.max_steps=30",
    "train.max_minutes=0",
    "train.anneal_by_time=false",
    "train.eval_every=30",
    "train.eval_users=100",
    "train.save_every=15",
    "train.bf16=false",
    "eval.bf16=false",
]


def test_device_names_are_checked_when_the_config_loads():
    with pytest.raises(InputError, match="auto, cpu, cuda or cuda:N"):
        load_config(DEMO, ["train.device=gpu"])
    assert load_config(DEMO, ["eval.device=cuda:1"]).eval.device == "cuda:1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_a_gpu_asked_for_where_torch_sees_none_names_the_fix():
    assert compute_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="set the device to auto or cpu"):
        compute_device("cuda")


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory) -> Path:
    """The shrunk demo recipe prepared, tokenized (SASRec fitted on the GPU) and trained 15 of 30 steps there."""
    from genrec.data import prepare_stage
    from genrec.tokenization.stage import tokenize_stage
    from genrec.training.trainer import Trainer

    run = tmp_path_factory.mktemp("gpu_run")
    cfg = load_config(DEMO, [f"run_dir={run}", *SMALL])
    prepare_stage(cfg)
    tokenize_stage(cfg)
    trainer = Trainer(cfg, progress=False)
    trainer.train(stop_after_steps=15)
    assert trainer.device.type == "cuda" and next(trainer.model.parameters()).is_cuda
    assert trainer.teacher.device.type == "cuda"
    return run


@needs_gpu
def test_a_gpu_checkpoint_resumes_on_the_cpu_and_decodes_alike_on_both(gpu_run, tmp_path):
    from genrec.evaluation.evaluator import evaluate_run
    from genrec.training.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(gpu_run, run)
    cfg = load_config(DEMO, [f"run_dir={run}", *SMALL, "train.device=cpu"])
    trainer = Trainer(cfg, progress=False)
    state = trainer.train()  # from the step-15 checkpoint the GPU wrote, to step 30
    assert trainer.device.type == "cpu" and state.step == 30
    assert state.evals[-1]["invalid_rate"] == 0

    on_gpu = evaluate_run(run, "test", max_users=300, bf16=False, progress=False, device="cuda")
    on_cpu = evaluate_run(run, "test", max_users=300, bf16=False, progress=False, device="cpu")
    assert (on_gpu["device"], on_cpu["device"]) == ("cuda", "cpu")
    assert on_gpu["genrec"]["invalid_rate"] == 0
    # the same weights in fp32: rankings differ only where float rounding swaps near-tied items
    assert abs(on_gpu["genrec"]["ndcg@10"] - on_cpu["genrec"]["ndcg@10"]) < 0.01


@needs_gpu
def test_the_teacher_gives_the_same_targets_on_the_gpu(gpu_run):
    from genrec.training.distill import SASRecTeacher
    from genrec.training.trainer import Trainer

    cfg = load_config(DEMO, [f"run_dir={gpu_run}", *SMALL])
    trainer = Trainer(cfg, progress=False)
    trainer.setup()
    examples = trainer.batch_for(0, 0)
    gpu = trainer.distill_targets(examples, max(len(ex.input_ids) for ex in examples))
    trainer.teacher = SASRecTeacher(
        trainer.teacher_folder,
        trainer.catalog,
        trainer.tokenizer,
        trainer.code_id_tensor.cpu(),
        trainer.tcfg.distill_temperature,
        trainer.tcfg.distill_mask_seen,
        device="cpu",
    )
    cpu = trainer.distill_targets(examples, max(len(ex.input_ids) for ex in examples))
    assert gpu[2].is_cuda and not cpu[2].is_cuda and len(cpu[0]) > 0
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=1e-4)


@needs_gpu
def test_the_hf_server_decodes_on_the_gpu_and_ranks_as_the_cpu(gpu_run, tmp_path):
    from fastapi.testclient import TestClient

    from genrec.config import EngineConfig, ServeConfig
    from genrec.serving.app import create_app
    from genrec.serving.engine import HFEngine
    from genrec.serving.handlers import ServerSettings
    from genrec.training.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(gpu_run, run)
    Trainer(load_config(DEMO, [f"run_dir={run}", *SMALL]), progress=False).train()  # to step 30, exported
    ask = {"history": ["0468569", "0120338"], "k": 10}
    ranked = {}
    for device in ("cuda", "cpu"):
        engine = HFEngine(run / "model", EngineConfig(device=device), run / "serve")
        app = create_app(engine, ServerSettings("demo", run, None, 20, limits=ServeConfig()))
        with TestClient(app) as client:
            wait_ready(client)
            assert next(engine.model.parameters()).device.type == device
            r = client.post("/v1/recommendations", json=ask)
            assert r.status_code == 200, r.text
            ranked[device] = [i["item_id"] for i in r.json()["items"]]
    assert len(ranked["cuda"]) == 10
    # the same fp32 weights: only near-tied items may swap places
    assert len(set(ranked["cuda"]) & set(ranked["cpu"])) >= 8
