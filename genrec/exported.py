"""The exported model folder (``RUN/model``): the one artifact every decoder loads.

Training writes it, and the HF recommender, the vLLM backend and the server read it, all
through :class:`ExportedModel` (the ``save_pretrained``/``from_pretrained`` idea of HF):

* the merged weights and ``config.json`` (a plain HF causal LM, loadable by vLLM);
* the tokenizer, holding the code tokens;
* ``catalog.parquet``/``catalog.json`` and ``trie.npz``: the items it may emit;
* ``genrec.json`` (:data:`PROMPT_FILE`): the prompt settings training used
  (:meth:`PromptFormatter.settings`), the default beam width and the code token ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genrec.errors import InputError
from genrec.io import atomic_write_json
from genrec.prompts import PromptFormatter
from genrec.tokenization.catalog import Catalog
from genrec.tokenization.trie import ItemTrie

PROMPT_FILE = "genrec.json"


def is_exported(folder: str | Path) -> bool:
    """Whether ``folder`` holds an exported genrec model."""
    return (Path(folder) / PROMPT_FILE).is_file()


def read_settings(folder: str | Path) -> dict[str, Any]:
    """The ``genrec.json`` of an exported model folder, or a clear error."""
    folder = Path(folder)
    if not is_exported(folder):
        raise InputError(
            f"{folder} is not an exported genrec model (no {PROMPT_FILE})",
            "run `genrec train CONFIG` first; it exports RUN/model",
        )
    return json.loads((folder / PROMPT_FILE).read_text())


@dataclass
class ExportedModel:
    """An exported model folder, loaded.

    Attributes:
        folder: where it was loaded from.
        tokenizer: the HF tokenizer with the code tokens.
        catalog: the items the model may emit.
        trie: the prefix trie over the catalog's token ids.
        formatter: the prompt format the model was trained with.
        settings: the whole ``genrec.json``.
        model: the HF causal LM (None when loaded with ``with_model=False``).
    """

    folder: Path
    tokenizer: Any
    catalog: Catalog
    trie: ItemTrie
    formatter: PromptFormatter
    settings: dict[str, Any] = field(default_factory=dict)
    model: Any = None

    @property
    def default_beams(self) -> int:
        return int(self.settings.get("num_beams") or 20)

    @classmethod
    def load(cls, folder: str | Path, with_model: bool = True, dtype=None) -> "ExportedModel":
        """Read an exported folder; ``with_model=False`` skips the weights (a vLLM engine loads them)."""
        from transformers import AutoTokenizer

        folder = Path(folder)
        settings = read_settings(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        catalog = Catalog.load(folder)
        trie = ItemTrie(catalog.token_ids(tokenizer), vocab_size=len(tokenizer))
        formatter = PromptFormatter.from_settings(tokenizer, catalog, settings)
        model = cls.load_weights(folder, dtype) if with_model else None
        return cls(folder, tokenizer, catalog, trie, formatter, settings, model)

    @staticmethod
    def load_weights(folder: str | Path, dtype=None):
        """The causal LM alone, in eval mode (for a caller that already holds the catalog and tokenizer)."""
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(Path(folder), dtype=dtype or torch.float32)
        model.eval()
        return model

    @staticmethod
    def save(folder: Path, model, formatter: PromptFormatter, trie: ItemTrie, **settings: Any) -> None:
        """Write a model, its tokenizer, catalog, trie and prompt settings into ``folder``.

        ``model`` must be a plain HF causal LM (LoRA merged, not quantized). ``settings`` are
        stored in ``genrec.json`` beside the formatter's own (e.g. ``num_beams``).
        """
        model.save_pretrained(folder, safe_serialization=True)
        formatter.tokenizer.save_pretrained(folder)
        formatter.catalog.save(folder)
        trie.save(folder)
        atomic_write_json(Path(folder) / PROMPT_FILE, {**formatter.settings(), **settings})
