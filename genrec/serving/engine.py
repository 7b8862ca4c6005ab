"""Serving engines: a model plus the catalog and trie it may emit, hot-swappable.

Front ends (:mod:`genrec.serving.handlers`) turn HTTP requests into prompts and call
``engine.rank``; they see only the :class:`RankingEngine` interface, so the same routes
run on either engine:

* :class:`RecommendationEngine`: a vLLM ``AsyncLLM`` driven by :class:`ItemBeamSearch`
  (``genrec serve``, the default);
* :class:`HFEngine`: the exported HF model and :func:`constrained_beam_search`, run in a
  worker thread (``genrec serve --backend hf``, and in-process tests): no vLLM needed.

Both keep the catalog in :class:`CatalogVersion` snapshots (:class:`VersionedCatalog`).
Requests name the version they were planned against, so a reload never changes the
items of a request in flight. The vLLM engine also writes every version's trie to its
own folder (``STATE/trie-vN``), which the engine process (where
:class:`TrieLogitsProcessor` runs) loads on the first request that names it. Version numbers
are persisted in the state folder (``STATE/catalog_version.json``), so a restarted server
never gives a different catalog a number it already used.

An engine is in one :data:`EngineState`: ``starting`` while its weights load (the server is
already listening), ``ready``, ``dead`` when its process died or it failed to start, and
``stopped`` after :meth:`shutdown`. :class:`EngineSupervisor` starts it in the background
and reports its death, after which the server answers 503 and exits for a supervisor to
restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from genrec.config import EngineConfig
from genrec.decoding.conversation import TitleIndex, title_year
from genrec.decoding.sampling import DistinctDraws, Sampling
from genrec.errors import NotReadyError
from genrec.exported import ExportedModel, read_settings
from genrec.io import atomic_write_json
from genrec.prompts import PromptFormatter
from genrec.tokenization.catalog import Catalog
from genrec.tokenization.trie import TRIE_FILE, ItemTrie

if TYPE_CHECKING:  # vLLM is optional: only the vLLM engine imports it, when it runs
    from genrec.decoding.vllm_backend import ItemBeamSearch

log = logging.getLogger(__name__)

#: (catalog row, sum of the ID tokens' log-probabilities), best first.
Ranking = list[tuple[int, float]]

#: What /health reports; only ``ready`` answers 200.
EngineState = Literal["starting", "ready", "dead", "stopped"]

#: The file in an engine's state folder that holds the last catalog version number used.
VERSION_FILE = "catalog_version.json"

#: Seconds between checks of vLLM's dead flag while a request waits on the engine.
DEATH_POLL_S = 0.5


class EngineDeadError(NotReadyError):
    """The engine died: this server cannot rank any more (HTTP 503; the server then exits)."""


@dataclass(frozen=True)
class CatalogVersion:
    """One immutable catalog snapshot and everything derived from it."""

    version: int
    catalog: Catalog
    trie: ItemTrie
    titles: TitleIndex
    years: list[int | None]
    formatter: PromptFormatter  # bound to this catalog
    trie_dir: Path | None = None  # where an engine process reads this version's trie (vLLM only)


@runtime_checkable
class RankingEngine(Protocol):
    """What the HTTP front end needs from an engine.

    Attributes:
        current: the catalog version new requests are planned against.
        tokenizer: the exported model's HF tokenizer (raw chat-templated prompts).
        settings: limits the front end checks requests against (``max_beams``, context length).
        model_dir: the exported model folder.
    """

    current: CatalogVersion
    tokenizer: Any
    settings: EngineConfig
    model_dir: Path

    @property
    def ready(self) -> bool:
        """Whether :meth:`rank` can answer now."""

    @property
    def state(self) -> EngineState:
        """starting, ready, dead or stopped."""

    @property
    def failure(self) -> str | None:
        """Why the engine is dead (a sentence fit for clients), or None."""

    def start(self) -> None:
        """Load the model (blocking: minutes for vLLM); the supervisor runs it in a thread."""

    def shutdown(self) -> None:
        """Stop the engine and its processes; a start still under way stops when it ends."""

    def mark_dead(self, reason: str) -> None:
        """Record that the engine cannot rank any more (the first reason is kept)."""

    def check_alive(self) -> None:
        """Notice a death no request has run into yet (polled by :class:`EngineSupervisor`)."""

    def require_ready(self) -> None:
        """Raise the 503 error that fits the state unless the engine is ready."""

    def reload_catalog(self) -> CatalogVersion: ...

    async def rank(
        self,
        prompt: list[int],
        k: int,
        num_beams: int,
        exclude: Iterable[int] | None = None,
        allow: Iterable[int] | None = None,
        version: CatalogVersion | None = None,
        sampling: Sampling | None = None,
    ) -> tuple[CatalogVersion, Ranking]:
        """Top-``k`` (catalog row, score) by beam search, or ``k`` distinct items drawn with
        ``sampling`` (then ``num_beams`` is unused), and the catalog version the rows refer to."""


class VersionedCatalog:
    """The catalog half of an engine, and its life cycle: numbered catalog versions, state.

    Args:
        model_dir: exported model folder (RUN/model): weights, tokenizer, catalog, trie.
        settings: engine settings.
        state_dir: where the last version number is kept (RUN/serve); None keeps it in memory
            only, so versions restart at 0 with the process.
    """

    def __init__(
        self, model_dir: str | Path, settings: EngineConfig | None = None, state_dir: str | Path | None = None
    ):
        self.model_dir = Path(model_dir).resolve()
        self.prompt_settings = read_settings(self.model_dir)
        self.settings = settings or EngineConfig()
        self.state_dir = None if state_dir is None else Path(state_dir).resolve()
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = None  # set by the first catalog load
        self._number_lock = threading.Lock()
        # one reload at a time, so `current` only ever moves to a newer version
        self._reload_lock = threading.Lock()
        # start() runs in a worker thread: shutdown() must see whether it has finished
        self._life_lock = threading.Lock()
        self._failure: str | None = None
        self._stopped = False
        self._next_version = self._last_version() + 1
        self.current = self._load_catalog()

    # -- life cycle ----------------------------------------------------------------------------
    def _started(self) -> bool:
        """Whether the model is loaded (each engine knows what that means)."""
        return False

    @property
    def state(self) -> EngineState:
        if self._failure is not None:
            return "dead"
        if self._stopped:
            return "stopped"
        return "ready" if self._started() else "starting"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def failure(self) -> str | None:
        return self._failure

    def mark_dead(self, reason: str) -> None:
        with self._life_lock:
            first = self._failure is None
            self._failure = self._failure or reason
        if first:
            log.error("engine dead: %s", reason)

    def check_alive(self) -> None:
        """In-process engines only die through :meth:`mark_dead`: nothing to poll."""

    def require_ready(self) -> None:
        self.check_alive()  # a death the supervisor has not polled yet still answers 503
        state = self.state
        if state == "dead":
            raise EngineDeadError(f"the engine is dead: {self._failure}", "this server is exiting; retry elsewhere")
        if state != "ready":
            raise NotReadyError(f"the engine is {state}", "retry when GET /health answers 200")

    # -- catalog versions ----------------------------------------------------------------------
    def _last_version(self) -> int:
        """The last version number a server on this state folder used (-1: none)."""
        path = None if self.state_dir is None else self.state_dir / VERSION_FILE
        if path is None or not path.is_file():
            return -1
        try:
            return int(json.loads(path.read_text())["last_version"])
        except (ValueError, KeyError, TypeError) as exc:
            # an unreadable counter must not stop the server, but numbers may then repeat: say so
            log.warning("%s is unreadable (%s); catalog versions restart at 0", path, exc)
            return -1

    def _new_version_number(self) -> int:
        with self._number_lock:
            version = self._next_version
            self._next_version += 1
            if self.state_dir is not None:
                # written before the version is served: a crash right after cannot reuse it
                atomic_write_json(self.state_dir / VERSION_FILE, {"last_version": version})
        return version

    def _load_catalog(self) -> CatalogVersion:
        exported = ExportedModel.load(self.model_dir, with_model=False)
        self.tokenizer = self.tokenizer or exported.tokenizer
        catalog, trie = exported.catalog, exported.trie
        version = self._new_version_number()
        return CatalogVersion(
            version,
            catalog,
            trie,
            TitleIndex(catalog),
            [title_year(t) for t in catalog.titles],
            exported.formatter,
            self._publish_trie(version, trie),
        )

    def _publish_trie(self, version: int, trie: ItemTrie) -> Path | None:
        """Make a new version's trie visible to the decoder; the folder it is in, if any."""
        return None

    def _retire(self, old: CatalogVersion, new: CatalogVersion) -> None:
        """Free what only versions older than ``old`` used (``old`` may still be decoding)."""

    def reload_catalog(self) -> CatalogVersion:
        """Re-read RUN/model's catalog (after `genrec items add/remove`) and serve it from now on."""
        with self._reload_lock:
            new = self._load_catalog()
            old, self.current = self.current, new
            self._retire(old, new)
        return new


class RecommendationEngine(VersionedCatalog):
    """Ranks items for prompts on a vLLM ``AsyncLLM``, with a reloadable catalog.

    Args:
        model_dir: exported model folder (RUN/model).
        state_dir: where catalog versions' tries and the last version number are written
            (must be writable).
        settings: vLLM engine settings.
    """

    def __init__(self, model_dir: str | Path, state_dir: str | Path, settings: EngineConfig | None = None):
        self.llm = None
        self._versions_lock = threading.Lock()
        self._in_flight: Counter[int] = Counter()  # requests decoding on each catalog version
        # tries an earlier server left: no engine process reads them, and numbers never repeat
        for stale in Path(state_dir).glob("trie-v*"):
            shutil.rmtree(stale, ignore_errors=True)
        super().__init__(model_dir, settings, state_dir)

    def _started(self) -> bool:
        return self.llm is not None

    def start(self) -> None:
        """Start the vLLM engine (spawns the engine-core process; takes ~15-170 s on CPU).

        Runs in a worker thread (see :class:`EngineSupervisor`): ``AsyncLLM`` attaches to the
        event loop on its first request.
        """
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from genrec.decoding.vllm_backend import engine_kwargs

        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs(self.settings, self.model_dir)))
        with self._life_lock:
            if not self._stopped:
                self.llm = llm
                return
        llm.shutdown()  # the server stopped while the engine was starting

    def shutdown(self) -> None:
        """Stop the engine-core process (and its workers); safe to call more than once."""
        with self._life_lock:
            self._stopped = True
            llm, self.llm = self.llm, None
        if llm is not None:
            llm.shutdown()
            # AsyncLLM.__del__ shuts down once more, at interpreter exit when vLLM's module globals
            # are already gone (a TypeError traceback on every exit): it is stopped, so make that a no-op
            llm.shutdown = lambda *args, **kwargs: None

    def check_alive(self) -> None:
        llm = self.llm
        # vLLM's own monitor thread flags a dead engine-core process; `errored` reads that flag
        if llm is not None and llm.errored:
            self.mark_dead("the vLLM engine process died")

    def _publish_trie(self, version: int, trie: ItemTrie) -> Path:
        trie_dir = self.state_dir / f"trie-v{version}"
        trie_dir.mkdir(parents=True, exist_ok=True)
        trie.save(trie_dir)
        return trie_dir

    def _retire(self, old: CatalogVersion, new: CatalogVersion) -> None:
        """Delete the tries of versions no request decodes on any more (the current one stays)."""
        with self._versions_lock:
            for folder in self.state_dir.glob("trie-v*"):
                version = int(folder.name.removeprefix("trie-v"))
                if version != self.current.version and version not in self._in_flight:
                    shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def _holding(self, v: CatalogVersion) -> Iterator[None]:
        """Keep ``v``'s trie folder on disk while a request decodes on it.

        The engine process reads the folder a request names; a reload that deleted it mid-search
        failed that request (edits under load: 500s). A request planned on a version that was
        retired before its search began gets the folder written again from memory.
        """
        with self._versions_lock:
            self._in_flight[v.version] += 1
            if not (v.trie_dir / TRIE_FILE).is_file():
                self._publish_trie(v.version, v.trie)
        try:
            yield
        finally:
            with self._versions_lock:
                self._in_flight[v.version] -= 1
                if not self._in_flight[v.version]:
                    del self._in_flight[v.version]
                    if v.version != self.current.version:
                        shutil.rmtree(v.trie_dir, ignore_errors=True)

    async def _top_logprobs(
        self, llm: Any, prompt: list[int], prefix: Sequence[int], search: ItemBeamSearch
    ) -> dict[int, float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from genrec.decoding.vllm_backend import top_logprobs

        params = SamplingParams(
            max_tokens=1, temperature=0.0, logprobs=search.logprobs, extra_args=search.xargs(prefix), detokenize=False
        )
        final = None
        async for out in llm.generate(
            TokensPrompt(prompt_token_ids=prompt + list(prefix)), params, request_id=uuid.uuid4().hex
        ):
            final = out
        return top_logprobs(final.outputs[0])

    async def _unless_dead(self, llm: Any, step: asyncio.Future) -> Any:
        """``await step``, unless the engine dies first.

        Calls in flight when the engine-core process dies wait forever (vLLM never fails their
        futures), so the step is raced against vLLM's dead flag.
        """
        from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDead

        try:
            while True:
                done, _ = await asyncio.wait({step}, timeout=DEATH_POLL_S)
                if done:
                    return step.result()
                if llm.errored:
                    raise VllmEngineDead()
        finally:
            if not step.done():
                step.cancel()
                # its CancelledError is expected: retrieved, so asyncio does not log it as lost
                step.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _draw(
        self,
        llm: Any,
        prompt: list[int],
        v: CatalogVersion,
        k: int,
        sampling: Sampling,
        excluded: list[int],
        allow: list[int] | None,
        round_: int,
    ) -> Ranking:
        """One round of ``2k`` draws in ONE engine request (``n`` sequences share the prompt)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        from genrec.decoding.vllm_processor import XARGS_KEY

        args: dict[str, Any] = {"trie": str(v.trie_dir), "version": v.version, "mode": "mask", "exclude": excluded}
        if allow is not None:
            args["allow"] = allow
        params = SamplingParams(
            n=2 * k,
            max_tokens=v.trie.depth,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=None if sampling.seed is None else sampling.seed + round_,
            logprobs=0,  # the drawn token's (processed) log-probability
            extra_args={XARGS_KEY: args},
            detokenize=False,
            # one answer holding all n sequences (streamed answers of an n>1 request each hold only
            # the sequences that changed in that step)
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for out in llm.generate(TokensPrompt(prompt_token_ids=prompt), params, request_id=uuid.uuid4().hex):
            final = out
        drawn = []
        for seq in final.outputs:
            tokens = list(seq.token_ids[: v.trie.depth])
            item = v.trie.item_of(tokens)
            if item is None:  # everything excluded: the processor ended the sequence early
                continue
            logprobs = seq.logprobs or []
            drawn.append((item, sum(float(step[t].logprob) for step, t in zip(logprobs, tokens))))
        return drawn

    async def _sample(
        self,
        llm: Any,
        prompt: list[int],
        v: CatalogVersion,
        k: int,
        sampling: Sampling,
        exclude: Iterable[int] | None,
        allow: Iterable[int] | None,
    ) -> Ranking:
        allow_rows = None if allow is None else sorted({int(i) for i in allow})
        draws = DistinctDraws(k, exclude or ())
        while not draws.done:
            round_ = self._draw(llm, prompt, v, k, sampling, draws.excluded, allow_rows, draws.rounds)
            draws.add(await self._unless_dead(llm, asyncio.ensure_future(round_)))
        return draws.ranking()

    async def rank(
        self,
        prompt: list[int],
        k: int,
        num_beams: int,
        exclude: Iterable[int] | None = None,
        allow: Iterable[int] | None = None,
        version: CatalogVersion | None = None,
        sampling: Sampling | None = None,
    ) -> tuple[CatalogVersion, Ranking]:
        """Top-``k`` (catalog row, score) for one prompt, and the catalog version the rows refer to."""
        from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDead

        self.require_ready()
        llm, v = self.llm, version or self.current
        if llm is None:  # stopped since the check
            raise NotReadyError("the engine is stopped", "the server is shutting down; retry elsewhere")
        try:
            with self._holding(v):
                return v, await self._search(llm, prompt, v, k, num_beams, exclude, allow, sampling)
        except VllmEngineDead as exc:
            # a dead engine is "not ready" for the client (503: retry elsewhere/later), not a bad request
            self.mark_dead("the vLLM engine process died")
            raise EngineDeadError("the vLLM engine process died", "this server is exiting; retry elsewhere") from exc

    async def _search(
        self,
        llm: Any,
        prompt: list[int],
        v: CatalogVersion,
        k: int,
        num_beams: int,
        exclude: Iterable[int] | None,
        allow: Iterable[int] | None,
        sampling: Sampling | None,
    ) -> Ranking:
        from genrec.decoding.vllm_backend import ItemBeamSearch

        if sampling is not None:
            return await self._sample(llm, prompt, v, k, sampling, exclude, allow)
        search = ItemBeamSearch(
            v.trie,
            num_beams,
            k,
            exclude=exclude,
            allow=allow,
            base_xargs={"trie": str(v.trie_dir), "version": v.version},
        )
        while not search.done:
            step = asyncio.gather(*[self._top_logprobs(llm, prompt, p, search) for p in search.requests()])
            search.advance(await self._unless_dead(llm, step))
        return search.ranking()


@dataclass
class _Search:
    """One request's search, queued for the HF engine's decoder thread."""

    v: CatalogVersion
    prompt: list[int]
    k: int
    num_beams: int
    exclude: list[int] | None
    allow: list[int] | None
    sampling: Sampling | None
    answer: asyncio.Future
    loop: asyncio.AbstractEventLoop

    def batch_key(self) -> tuple | None:
        """Searches with equal keys run as one batch (draws run alone: each has its own seed)."""
        return None if self.sampling is not None else (self.v.version, self.num_beams)

    def settle(self, result: Ranking | None = None, error: BaseException | None = None) -> None:
        def _set() -> None:
            if self.answer.done():  # the client left and the request was cancelled
                return
            if error is not None:
                self.answer.set_exception(error)
            else:
                self.answer.set_result(result)

        self.loop.call_soon_threadsafe(_set)


class HFEngine(VersionedCatalog):
    """Ranks items on the exported HF model, exactly as :class:`GenerativeRecommender` does.

    Decoding runs on a thread of its own, so the event loop keeps answering (health, errors)
    meanwhile. Searches that arrive while one batch decodes wait in a queue and then run
    together as the next batch: the beams of all in-flight requests (with the same beam
    width) share one prefill and one forward pass per ID token, so throughput grows with
    concurrent clients instead of queueing them one by one. A batch holds at most
    ``max_num_seqs`` sequences (users x beams).

    Args:
        model_dir: exported model folder (RUN/model).
        settings: ``dtype`` picks the weights' precision (float32 ranks like `genrec recommend`);
            ``max_beams`` and ``max_model_len`` bound requests as on vLLM; ``max_num_seqs``
            bounds a batch.
        state_dir: where the last catalog version number is kept (None: in memory only).
    """

    def __init__(
        self, model_dir: str | Path, settings: EngineConfig | None = None, state_dir: str | Path | None = None
    ):
        self.model = None
        self._queue: queue.SimpleQueue[_Search | None] = queue.SimpleQueue()
        # a daemon, so a forgotten shutdown cannot hold the process; shutdown joins it, since a
        # thread still inside torch when the interpreter finalizes aborts the process (status -6)
        self._decoder = threading.Thread(target=self._decode_forever, name="genrec-decode", daemon=True)
        #: batches decoded and searches in them (how much batching the load gave), for benchmarks
        self.batches = 0
        self.searches = 0
        super().__init__(model_dir, settings, state_dir)

    def _started(self) -> bool:
        return self.model is not None

    def start(self) -> None:
        """Load the weights, the way every HF decoder loads an exported folder."""
        import torch

        from genrec.precision import compute_device

        # the catalog and tokenizer are already loaded (_load_catalog): only the weights are missing
        model = ExportedModel.load_weights(self.model_dir, dtype=getattr(torch, self.settings.dtype))
        model.to(compute_device(self.settings.device))
        with self._life_lock:
            if not self._stopped:
                self.model = model
                self._decoder.start()

    def shutdown(self) -> None:
        with self._life_lock:
            self._stopped = True
            self.model = None
        # a batch under way finishes (it holds its own reference to the weights); queued ones get 503
        self._queue.put(None)
        if self._decoder.is_alive() and threading.current_thread() is not self._decoder:
            self._decoder.join(timeout=60)

    # -- the decoder thread -------------------------------------------------------------------
    def _next_batch(self, first: _Search, waiting: list[_Search]) -> list[_Search]:
        """``first`` and the queued searches that can share its batch (the rest keep waiting)."""
        while True:  # take everything queued now: it all waited while the last batch decoded
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # shutdown: seen again by the loop
                break
            waiting.append(item)
        key, room = first.batch_key(), max(1, self.settings.max_num_seqs // max(1, first.num_beams))
        batch = [first]
        if key is not None:
            for search in list(waiting):
                if len(batch) >= room:
                    break
                if search.batch_key() == key:
                    batch.append(search)
                    waiting.remove(search)
        return batch

    def _decode_forever(self) -> None:
        waiting: list[_Search] = []
        while True:
            first = waiting.pop(0) if waiting else self._queue.get()
            model = self.model
            if first is None or model is None:
                for search in [s for s in [first, *waiting] if s is not None]:
                    search.settle(error=NotReadyError("the engine is stopped", "the server is shutting down"))
                return
            batch = self._next_batch(first, waiting)
            try:
                results = self._decode(model, batch)
            except Exception as exc:  # answered as the request's error; the thread lives on
                for search in batch:
                    search.settle(error=exc)
                continue
            self.batches, self.searches = self.batches + 1, self.searches + len(batch)
            for search, ranked in zip(batch, results):
                search.settle(ranked)

    @staticmethod
    def _decode(model: Any, batch: list[_Search]) -> list[Ranking]:
        from genrec.decoding.hf import GenerativeRecommender

        first = batch[0]
        # the recommender itself (not a copy of its steps), so scores match `genrec recommend`
        recommender = GenerativeRecommender(model, first.v.formatter, first.v.trie)
        if first.sampling is not None:
            drawn = recommender.sample(first.prompt, first.k, first.sampling, exclude=first.exclude, allow=first.allow)
            return [[(r.index, r.score) for r in drawn]]
        rows = recommender.recommend(
            [],
            max(s.k for s in batch),
            num_beams=first.num_beams,
            batch_size=len(batch),
            prompts=[s.prompt for s in batch],
            exclude=[s.exclude for s in batch],
            allow=[s.allow for s in batch],
        )
        return [[(r.index, r.score) for r in row[: s.k]] for s, row in zip(batch, rows)]

    async def rank(
        self,
        prompt: list[int],
        k: int,
        num_beams: int,
        exclude: Iterable[int] | None = None,
        allow: Iterable[int] | None = None,
        version: CatalogVersion | None = None,
        sampling: Sampling | None = None,
    ) -> tuple[CatalogVersion, Ranking]:
        """Top-``k`` (catalog row, score) for one prompt, and the catalog version the rows refer to."""
        self.require_ready()
        v = version or self.current
        if self.model is None:  # stopped since the check
            raise NotReadyError("the engine is stopped", "the server is shutting down; retry elsewhere")
        loop = asyncio.get_running_loop()
        search = _Search(
            v,
            list(prompt),
            k,
            num_beams,
            None if exclude is None else list(exclude),
            None if allow is None else list(allow),
            sampling,
            loop.create_future(),
            loop,
        )
        self._queue.put(search)
        return v, await search.answer


class EngineSupervisor:
    """Starts an engine in the background and watches it until it dies or the server stops.

    The server binds its port first and answers ``/health`` with ``starting`` (503) while the
    engine loads: a load balancer then sees a live process that is not ready yet, rather than
    a refused connection for minutes. When the engine dies (its process killed, or it failed
    to start), ``on_death`` gets the reason: the server answers 503 and exits.

    Args:
        engine: the engine to start and watch.
        on_death: called once, on the event loop, with the reason.
        poll_s: seconds between liveness checks.
    """

    def __init__(self, engine: RankingEngine, on_death: Callable[[str], None], poll_s: float = 0.5):
        self.engine = engine
        self.on_death = on_death
        self.poll_s = poll_s

    async def run(self) -> None:
        engine = self.engine
        if engine.state == "starting":
            try:
                await asyncio.to_thread(engine.start)
            except Exception as exc:
                log.error("the engine failed to start", exc_info=exc)
                engine.mark_dead(f"the engine failed to start ({type(exc).__name__}; see the server log)")
            else:
                if engine.ready:
                    log.info("engine ready: serving catalog version %d", engine.current.version)
        while engine.state not in ("dead", "stopped"):
            engine.check_alive()
            await asyncio.sleep(self.poll_s)
        if engine.state == "dead":
            self.on_death(engine.failure or "the engine died")
