"""The vLLM backend: trie-constrained beam search over items, driven from outside the engine.

vLLM's built-in beam search drops per-request arguments (so no exclusions or allow-lists),
caps the width at ``max_logprobs / 2`` and pads missing beams with ``-inf`` junk. An item
is a fixed, short number of code tokens, so genrec runs its own fixed-depth beam search
instead: every step sends one single-token request per live beam (prompt + the beam's
ID prefix), reads back the top log-probabilities, which :class:`TrieLogitsProcessor`
has already restricted to the beam's trie children (in ``"score"`` mode, so they equal
the model's raw log-probabilities, the quantity the HF backend ranks by), and keeps the
best ``num_beams`` prefixes. Prefix caching makes every step after the first re-read
only the last block of the prompt.

:class:`ItemBeamSearch` is the search for one request with no I/O at all; the offline
:class:`VllmRecommender` advances many of them in lock step through ``LLM.generate``,
and the server (``genrec.serving.engine``) advances each one with ``AsyncLLM``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

from tqdm.auto import tqdm

from genrec.config import EngineConfig
from genrec.decoding.vllm_processor import XARGS_KEY, sink_token_id
from genrec.errors import InputError
from genrec.exported import ExportedModel
from genrec.recommender import Recommendation
from genrec.tokenization.trie import ItemTrie

#: vLLM reports "no such candidate" as very negative numbers (``-inf``, or -9999.0 over JSON).
_JUNK = -1e4


def engine_kwargs(settings: EngineConfig, model_dir: str | Path) -> dict:
    """Keyword arguments for ``LLM(...)`` / ``AsyncEngineArgs(...)`` serving an exported model folder."""
    from genrec.decoding.vllm_processor import TrieLogitsProcessor

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
    return dict(
        model=str(model_dir),
        tokenizer=str(model_dir),
        dtype=settings.dtype,
        enforce_eager=settings.enforce_eager,
        block_size=settings.block_size,
        enable_prefix_caching=True,
        max_model_len=settings.context_length(model_dir),
        # processed log-probs are the ones after the trie mask (see TrieLogitsProcessor)
        logprobs_mode="processed_logprobs",
        max_logprobs=settings.max_beams + 1,
        logits_processors=[] if processor_entry_point_installed() else [TrieLogitsProcessor],
        max_num_seqs=settings.max_num_seqs,
        seed=settings.seed,
    )


def processor_entry_point_installed() -> bool:
    """True when the package's ``vllm.logits_processors`` entry point is installed.

    vLLM then loads the processor into every engine by itself; registering it again
    would run the mask twice.
    """
    from importlib.metadata import entry_points

    return any(ep.value.endswith(":TrieLogitsProcessor") for ep in entry_points(group="vllm.logits_processors"))


#: vLLM's own OpenAI-compatible server (``vllm serve`` runs the same module)
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def server_command(
    settings: EngineConfig,
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | None = None,
    python: str = "python",
) -> tuple[dict[str, str], list[str]]:
    """Environment and argv that start vLLM's own OpenAI server on the engine genrec would start.

    Every :func:`engine_kwargs` key becomes the engine flag of the same name (``block_size`` ->
    ``--block-size 32``, ``enforce_eager=True`` -> ``--enforce-eager``), so the stock server's
    engine has genrec's block size, context length, dtype, log-prob mode and processor.
    """
    kwargs = engine_kwargs(settings, model_dir)
    if kwargs["tokenizer"] == kwargs["model"]:
        del kwargs["tokenizer"]  # vLLM's default
    argv = [python, "-m", VLLM_SERVER_MODULE]
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):  # logits processors: empty when the entry point loads ours
            argv += [flag, *(f"{v.__module__}:{v.__qualname__}" for v in value)] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    if served_model_name:
        argv += ["--served-model-name", served_model_name]
    argv += ["--host", host, "--port", str(port)]
    return {"VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"]}, argv


class ItemBeamSearch:
    """Fixed-depth beam search over the item trie for one prompt, with no I/O.

    Use: while not ``done``: send ``requests()`` (one ID prefix per live beam) to the
    engine, each as prompt + prefix with ``xargs(prefix)``, and pass the returned top
    log-probability dicts to ``advance`` in the same order. Then read ``ranking()``.

    Args:
        trie: the item trie the engine's processor uses (same version).
        num_beams: beams kept per step.
        top_k: items returned.
        exclude / allow: catalog rows never to return / to choose from only; sent to the
            engine, which applies them inside the trie walk.
        base_xargs: extra ``genrec`` arguments for every request (trie folder and version).
    """

    def __init__(
        self,
        trie: ItemTrie,
        num_beams: int,
        top_k: int,
        exclude: Iterable[int] | None = None,
        allow: Iterable[int] | None = None,
        base_xargs: dict | None = None,
    ):
        if top_k > num_beams:
            raise ValueError(f"top_k={top_k} is larger than num_beams={num_beams}")
        self.trie, self.num_beams, self.top_k = trie, num_beams, top_k
        self.sink = sink_token_id(trie)
        self.beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
        self.step = 0
        args = dict(base_xargs or {})
        args["mode"] = "score"
        if exclude is not None:
            args["exclude"] = sorted({int(i) for i in exclude})
        if allow is not None:
            args["allow"] = sorted({int(i) for i in allow})
        self._args = args

    @property
    def done(self) -> bool:
        return self.step >= self.trie.depth or not self.beams

    @property
    def logprobs(self) -> int:
        """Top log-probs to ask per request: every beam's best ``num_beams`` children, plus the sink."""
        return self.num_beams + 1

    def requests(self) -> list[tuple[int, ...]]:
        return [prefix for prefix, _ in self.beams]

    def xargs(self, prefix: Sequence[int]) -> dict:
        return {XARGS_KEY: {**self._args, "prefix_len": len(prefix)}}

    def advance(self, top_logprobs: Sequence[dict[int, float]]) -> None:
        if len(top_logprobs) != len(self.beams):
            raise ValueError("one log-prob dict per requested prefix is needed")
        candidates: list[tuple[float, tuple[int, ...]]] = []
        for (prefix, score), top in zip(self.beams, top_logprobs):
            for token, logprob in top.items():
                # the sink and vLLM's padding are not continuations; the processor already
                # removed every token off the trie, checked here once more for safety
                if token == self.sink or not math.isfinite(logprob) or logprob <= _JUNK:
                    continue
                if self.trie.node_of(prefix + (token,)) < 0:
                    continue
                candidates.append((score + logprob, prefix + (token,)))
        # best first; ties by token ids so runs are reproducible
        candidates.sort(key=lambda c: (-c[0], c[1]))
        self.beams = [(p, s) for s, p in candidates[: self.num_beams]]
        self.step += 1

    def ranking(self) -> list[tuple[int, float]]:
        """(catalog row, sum of ID-token log-probs), best first, at most ``top_k`` distinct items."""
        out = []
        for prefix, score in self.beams:
            item = self.trie.item_of(list(prefix))
            if item is not None:
                out.append((item, score))
        return out[: self.top_k]


def top_logprobs(completion_output) -> dict[int, float]:
    """The first generated position's {token id: logprob} of a vLLM CompletionOutput."""
    if not completion_output.logprobs:
        return {}
    return {int(t): float(lp.logprob) for t, lp in completion_output.logprobs[0].items()}


class VllmRecommender:
    """Offline batch recommendation on a vLLM engine (same answers as the HF ``GenerativeRecommender``).

    Args:
        folder: an exported model folder (RUN/model).
        settings: engine settings (the config's ``engine`` section).
    """

    def __init__(self, folder: str | Path, settings: EngineConfig | None = None):
        from vllm import LLM

        self.folder = Path(folder)
        exported = ExportedModel.load(self.folder, with_model=False)
        self.settings = settings or EngineConfig()
        self.catalog, self.formatter, self.trie = exported.catalog, exported.formatter, exported.trie
        self.llm = LLM(**engine_kwargs(self.settings, self.folder))

    def rank(
        self,
        prompts: Sequence[Sequence[int]],
        k: int = 10,
        num_beams: int = 20,
        exclude: Sequence[Iterable[int]] | None = None,
        allow: Sequence[Iterable[int]] | None = None,
        batch_size: int = 16,
        progress: bool = False,
    ) -> list[list[tuple[int, float]]]:
        """Top-``k`` (catalog row, score) per prompt; ``batch_size`` prompts share each engine call."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if num_beams > self.settings.max_beams:
            raise InputError(
                f"num_beams={num_beams} is above the engine's maximum {self.settings.max_beams}",
                "lower num_beams or start the engine with a larger max_beams",
            )
        out: list[list[tuple[int, float]]] = []
        bar = tqdm(total=len(prompts), desc="recommending (vLLM)", unit="user", disable=not progress)
        for start in range(0, len(prompts), batch_size):
            stop = min(len(prompts), start + batch_size)
            searches = [
                ItemBeamSearch(
                    self.trie,
                    num_beams,
                    k,
                    exclude=exclude[i] if exclude is not None else None,
                    allow=allow[i] if allow is not None else None,
                )
                for i in range(start, stop)
            ]
            while not all(s.done for s in searches):
                batch, owners = [], []
                for j, search in enumerate(searches):
                    if search.done:
                        continue
                    for prefix in search.requests():
                        params = SamplingParams(
                            max_tokens=1,
                            temperature=0.0,
                            logprobs=search.logprobs,
                            extra_args=search.xargs(prefix),
                            detokenize=False,
                        )
                        batch.append((TokensPrompt(prompt_token_ids=list(prompts[start + j]) + list(prefix)), params))
                        owners.append(j)
                results = self.llm.generate([p for p, _ in batch], [sp for _, sp in batch], use_tqdm=False)
                per_search: dict[int, list[dict[int, float]]] = {}
                for j, res in zip(owners, results):
                    per_search.setdefault(j, []).append(top_logprobs(res.outputs[0]))
                for j, tops in per_search.items():
                    searches[j].advance(tops)
            out.extend(s.ranking() for s in searches)
            bar.update(stop - start)
        bar.close()
        return out

    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int = 10,
        *,
        exclude: Sequence[Iterable[int]] | None = None,
        allow: Sequence[Iterable[int]] | None = None,
        progress: bool = False,
        num_beams: int = 20,
        batch_size: int = 16,
    ) -> list[list[Recommendation]]:
        """Like :meth:`GenerativeRecommender.recommend` (a :class:`~genrec.recommender.Recommender`)."""
        prompts = [self.formatter.next_item_prompt(h) for h in histories]
        ranked = self.rank(
            prompts, k=k, num_beams=num_beams, exclude=exclude, allow=allow, batch_size=batch_size, progress=progress
        )
        return [Recommendation.rows(self.catalog, row) for row in ranked]

    def close(self) -> None:
        """Stop the engine process now rather than at interpreter exit."""
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
