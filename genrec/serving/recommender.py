"""Recommender: a model + catalog + trie + prompt format, answering "what next?" for users.

This is the HF backend used by training-time validation, `genrec recommend`,
`genrec evaluate` and the demo. It batches users, left-pads their prompts and
runs the constrained beam search, so every returned item exists in the catalog.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from genrec.errors import GenrecError
from genrec.serving.beam_search import constrained_beam_search, left_pad
from genrec.tokenization.catalog import Catalog
from genrec.tokenization.trie import ItemTrie
from genrec.training.prompts import PromptFormatter

PROMPT_FILE = "genrec.json"


@dataclass
class Recommendation:
    """One recommended item."""

    item_id: str
    index: int
    sid: str
    title: str
    score: float

    def to_dict(self) -> dict:
        return {"item_id": self.item_id, "sid": self.sid, "title": self.title, "score": round(self.score, 6)}

    @classmethod
    def rows(cls, catalog: Catalog, ranked: Sequence[tuple[int, float]]) -> list["Recommendation"]:
        """One user's ranked (catalog row, score) pairs as recommendations."""
        return [cls(catalog.item_ids[i], i, catalog.sid(i), catalog.titles[i], float(s)) for i, s in ranked]


class Recommender:
    """Ranks catalog items for users with a fine-tuned causal LM.

    Args:
        model: the causal LM (its vocabulary holds the code tokens).
        formatter: the prompt format bound to the model's tokenizer and the catalog.
        trie: the item trie over the catalog's token ids (built from them when None).
    """

    def __init__(self, model, formatter: PromptFormatter, trie: ItemTrie | None = None):
        self.model = model
        self.formatter = formatter
        self.catalog: Catalog = formatter.catalog
        tok = formatter.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.trie = trie or ItemTrie(self.catalog.token_ids(tok), vocab_size=len(tok))

    @classmethod
    def from_folder(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> "Recommender":
        """Load an exported model folder (merged weights, tokenizer, catalog, trie, prompt settings)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        if not (folder / PROMPT_FILE).is_file():
            raise GenrecError(f"{folder} is not an exported genrec model",
                              "run `genrec train CONFIG` first (it exports RUN/model)")
        settings = json.loads((folder / PROMPT_FILE).read_text())
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        model.eval()
        catalog = Catalog.load(folder)
        fmt = PromptFormatter.from_settings(tok, catalog, settings)
        return cls(model, fmt, ItemTrie(catalog.token_ids(tok), vocab_size=len(tok)))

    def recommend(self, histories: Sequence[Sequence[int]], k: int = 10, num_beams: int = 20,
                  batch_size: int = 16, exclude: Sequence[Iterable[int]] | None = None,
                  prompts: Sequence[Sequence[int]] | None = None,
                  progress: bool = False) -> list[list[Recommendation]]:
        """Top-``k`` items for each history (catalog rows), best first.

        Args:
            histories: per user, catalog rows in time order.
            k: items per user (at most ``num_beams``).
            num_beams: beam width.
            exclude: per user, catalog rows never to return (e.g. the history itself).
            prompts: ready prompt token ids instead of history prompts (e.g. conversational).
        """
        if k > num_beams:
            raise GenrecError(f"k={k} is larger than the beam width {num_beams}", "raise num_beams or lower k")
        n = len(prompts) if prompts is not None else len(histories)
        out: list[list[Recommendation]] = []
        bar = tqdm(total=n, desc="recommending", unit="user", disable=not progress)
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            batch_prompts = (list(prompts[start:stop]) if prompts is not None else
                             [self.formatter.next_item_prompt(h) for h in histories[start:stop]])
            ids, mask = left_pad(batch_prompts, self.pad_id)
            exclusion = self.trie.exclusion([list(e) for e in exclude[start:stop]]) if exclude is not None else None
            ranked = constrained_beam_search(self.model, ids, mask, self.trie, num_beams=num_beams,
                                             top_k=k, exclusion=exclusion)
            out.extend(Recommendation.rows(self.catalog, row) for row in ranked)
            bar.update(stop - start)
        bar.close()
        return out
