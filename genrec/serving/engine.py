"""The serving engine: a vLLM ``AsyncLLM`` plus the catalog and trie it may emit, hot-swappable.

Front ends (``genrec.serving.server``) turn HTTP requests into prompts and call
:meth:`RecommendationEngine.rank`; this module owns the model, the current catalog
version and the async beam search. Every catalog version gets its own trie folder
(``STATE/trie-vN``); requests name the folder and version they were planned against,
so a reload never changes the items of a request in flight, and the engine process
(where :class:`TrieLogitsProcessor` runs) loads the new trie on the first request
that names it.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from genrec.errors import GenrecError
from genrec.serving.conversation import TitleIndex, title_year
from genrec.serving.vllm_backend import EngineSettings, ItemBeamSearch, check_exported_model, top_logprobs
from genrec.tokenization.catalog import Catalog
from genrec.tokenization.trie import ItemTrie


@dataclass(frozen=True)
class CatalogVersion:
    """One immutable catalog snapshot and everything derived from it."""

    version: int
    catalog: Catalog
    trie: ItemTrie
    trie_dir: Path
    titles: TitleIndex
    years: list[int | None]
    formatter: object  # PromptFormatter bound to this catalog


class RecommendationEngine:
    """Ranks items for prompts on an ``AsyncLLM``, with a reloadable catalog.

    Args:
        model_dir: exported model folder (RUN/model): weights, tokenizer, catalog, trie.
        state_dir: where catalog versions' tries are written (must be writable).
        settings: vLLM engine settings.
    """

    def __init__(self, model_dir: str | Path, state_dir: str | Path, settings: EngineSettings | None = None):
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir).resolve()
        self.prompt_settings = check_exported_model(self.model_dir)
        self.settings = settings or EngineSettings()
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self._lock = threading.Lock()
        self._next_version = 0
        self.current = self._load_catalog()
        self.llm = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the vLLM engine (spawns the engine-core process; takes ~15-40 s on CPU)."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**self.settings.engine_kwargs(self.model_dir)))

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

    # -- catalog -----------------------------------------------------------------------------
    def _load_catalog(self) -> CatalogVersion:
        from genrec.training.prompts import PromptFormatter

        catalog = Catalog.load(self.model_dir)
        trie = ItemTrie(catalog.token_ids(self.tokenizer), vocab_size=len(self.tokenizer))
        with self._lock:
            version = self._next_version
            self._next_version += 1
        trie_dir = self.state_dir / f"trie-v{version}"
        trie_dir.mkdir(parents=True, exist_ok=True)
        trie.save(trie_dir)
        formatter = PromptFormatter.from_settings(self.tokenizer, catalog, self.prompt_settings)
        return CatalogVersion(version, catalog, trie, trie_dir, TitleIndex(catalog),
                              [title_year(t) for t in catalog.titles], formatter)

    def reload_catalog(self) -> CatalogVersion:
        """Re-read RUN/model's catalog (after `genrec items add/remove`) and serve it from now on."""
        new = self._load_catalog()
        old, self.current = self.current, new
        # keep the previous version's trie for requests still decoding against it
        for folder in self.state_dir.glob("trie-v*"):
            if folder not in (new.trie_dir, old.trie_dir):
                shutil.rmtree(folder, ignore_errors=True)
        return new

    # -- ranking -----------------------------------------------------------------------------
    async def _top_logprobs(self, prompt: list[int], prefix: Sequence[int], search: ItemBeamSearch) -> dict[int, float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=search.logprobs,
                                extra_args=search.xargs(prefix), detokenize=False)
        final = None
        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=prompt + list(prefix)), params,
                                           request_id=uuid.uuid4().hex):
            final = out
        return top_logprobs(final.outputs[0])

    async def rank(self, prompt: list[int], k: int, num_beams: int, exclude: Iterable[int] | None = None,
                   allow: Iterable[int] | None = None,
                   version: CatalogVersion | None = None) -> tuple[CatalogVersion, list[tuple[int, float]]]:
        """Top-``k`` (catalog row, score) for one prompt, and the catalog version the rows refer to."""
        if self.llm is None:
            raise GenrecError("the engine is not started", "call RecommendationEngine.start() first")
        v = version or self.current
        search = ItemBeamSearch(v.trie, num_beams, k, exclude=exclude, allow=allow,
                                base_xargs={"trie": str(v.trie_dir), "version": v.version})
        while not search.done:
            tops = await asyncio.gather(*[self._top_logprobs(prompt, p, search) for p in search.requests()])
            search.advance(tops)
        return v, search.ranking()
