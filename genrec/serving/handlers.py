"""The route logic of `genrec serve`, as plain code over a :class:`RankingEngine`.

Nothing here knows FastAPI: a handler takes a parsed body (:mod:`genrec.serving.protocol`)
and returns the JSON answer, or raises :class:`ApiError` / :class:`GenrecError`, which the
app (:mod:`genrec.serving.app`) turns into OpenAI-style error answers. So the rules (which
``k`` is too large, what an empty prompt is, how filters become allow/exclude lists) can be
read and tested without a server, on either engine.

Every request reads ``engine.current`` once and plans against that catalog version, so a
catalog reload in the middle of a request never mixes rows of two versions. Planning (title
resolution, tokenization, allow/exclude lists) is CPU work proportional to the request, so
it runs in a worker thread: the event loop keeps answering other requests, /health and
signals meanwhile. Sizes are bounded first (``serve.max_*``, 400 beyond).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genrec.decoding.conversation import (
    ChatRequest,
    YearRange,
    read_conversation,
    render_answer,
)
from genrec.config import ServeConfig
from genrec.decoding.sampling import Sampling
from genrec.recommender import Recommendation
from genrec.serving.engine import CatalogVersion, Ranking, RankingEngine
from genrec.serving.protocol import (
    ApiError,
    ChatBody,
    CompletionBody,
    Filters,
    NewItemsBody,
    RecommendationBody,
    RemoveItemsBody,
)

#: semantic IDs written in a prompt (the items a user has seen, for ``exclude_seen``)
_SID = re.compile(r"(?:<[a-z]_\d+>)+")

#: OpenAI parameters genrec cannot honour, with the values that mean "not used" (accepted);
#: any other value is refused with a 400 that says why
_NEUTRAL: dict[str, tuple[tuple[Any, ...], str]] = {
    "stop": ((None, "", []), "an answer is whole item IDs, which a stop sequence would cut"),
    "presence_penalty": ((None, 0, 0.0), "items are ranked, not sampled token by token with penalties"),
    "frequency_penalty": ((None, 0, 0.0), "items are ranked, not sampled token by token with penalties"),
    "logit_bias": ((None, {}), "only catalog ID tokens can be generated; use filters to steer items"),
    "echo": ((None, False), "the prompt is not repeated in the answer"),
    "suffix": ((None, ""), "there is no text insertion: a completion is one item ID"),
    "best_of": ((None, 1), "beam search already returns the best n items; use num_beams"),
    "tools": ((None, []), "this model recommends items and calls no tools"),
    "tool_choice": ((None, "none", "auto"), "this model recommends items and calls no tools"),
}


def sse(chunks: list[dict]) -> list[str]:
    """Server-sent events for an answer's chunks, ended as OpenAI ends a stream."""
    return [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]


def completion_chunks(answer: dict, include_usage: bool) -> list[dict]:
    """A finished completion as OpenAI's stream chunks: one per choice (items are known only at
    the end of the search, so nothing is gained by streaming earlier), the items with the last."""
    head = {k: answer[k] for k in ("id", "object", "created", "model")}
    chunks = [{**head, "choices": [choice]} for choice in answer["choices"]] or [{**head, "choices": []}]
    chunks[-1]["items"] = answer["items"]
    if include_usage:
        chunks.append({**head, "choices": [], "usage": answer["usage"]})
    return chunks


def chat_chunks(answer: dict, include_usage: bool) -> list[dict]:
    """A finished chat answer as ``chat.completion.chunk`` deltas: role, content, finish."""
    head = {k: answer[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    choice = answer["choices"][0]

    def chunk(delta: dict, finish: str | None, logprobs: dict | None = None) -> dict:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

    chunks = [
        chunk({"role": "assistant", "content": ""}, None),
        chunk({"content": choice["message"]["content"]}, None, choice.get("logprobs")),
        chunk({}, choice["finish_reason"]) | {"items": answer["items"], "understood": answer["understood"]},
    ]
    if include_usage:
        chunks.append({**head, "choices": [], "usage": answer["usage"]})
    return chunks


@dataclass
class ServerSettings:
    """What `genrec serve` was started with (beyond the engine's own settings)."""

    model_name: str
    run_dir: Path | None  # RUN (for catalog edits), None when serving a bare model folder
    api_key: str | None = None
    default_beams: int = 20
    limits: ServeConfig = field(default_factory=ServeConfig)  # the max_* request sizes


@dataclass
class Plan:
    """One search, planned against one catalog version: what the engine is asked."""

    v: CatalogVersion
    prompt: list[int]
    k: int
    beams: int
    exclude: list[int]
    allow: list[int] | None
    sampling: Sampling | None = None  # None: ranked by beam search


# -- request pieces that need only a catalog version ------------------------------------------------
def items_of(v: CatalogVersion, ranked: Ranking) -> list[dict]:
    """Ranked rows as the ``items`` every answer carries."""
    return [r.to_dict() for r in Recommendation.rows(v.catalog, ranked)]


def rows_of(v: CatalogVersion, ids: list[str] | None, param: str) -> list[int]:
    """Catalog rows of item ids; unknown ids are the client's error, named under ``param``."""
    rows, unknown = [], []
    for i in ids or []:
        r = v.catalog.get_index(str(i))
        (unknown if r is None else rows).append(str(i) if r is None else r)
    if unknown:
        raise ApiError(400, f"unknown item id(s) in {param}: {unknown[:5]}", param=param)
    return rows


def allow_list(v: CatalogVersion, filters: Filters | None, years: YearRange | None = None) -> list[int] | None:
    """The only rows a request may receive (None: all): filters' item_ids and years, and ``years``
    read from a conversation (the filters' explicit bounds win)."""
    allow: set[int] | None = None
    if filters and filters.item_ids is not None:
        allow = set(rows_of(v, filters.item_ids, "filters.item_ids"))
    yr = YearRange(filters.year_min if filters else None, filters.year_max if filters else None)
    if years:
        yr = YearRange(years.low if yr.low is None else yr.low, years.high if yr.high is None else yr.high)
    if yr:
        in_range = {r for r, y in enumerate(v.years) if yr.allows(y)}
        allow = in_range if allow is None else allow & in_range
    return None if allow is None else sorted(allow)


def excluded_rows(v: CatalogVersion, filters: Filters | None, base: set[int]) -> list[int]:
    """``base`` plus the filters' exclude_item_ids, as sorted catalog rows."""
    exclude = set(base)
    if filters and filters.exclude_item_ids:
        exclude |= set(rows_of(v, filters.exclude_item_ids, "filters.exclude_item_ids"))
    return sorted(exclude)


def completion_logprobs(v: CatalogVersion, row: int, score: float, ranked: Ranking, top: int) -> dict:
    """OpenAI's legacy logprobs for one choice: the item's ID is one "token", its score the logprob;
    ``top`` > 0 adds the best ``top`` items of the ranking as the alternatives."""
    alternatives = [{v.catalog.sid(r): round(s, 6) for r, s in ranked[:top]}] if top else None
    return {
        "tokens": [v.catalog.sid(row)],
        "token_logprobs": [round(score, 6)],
        "top_logprobs": alternatives,
        "text_offset": [0],
    }


def chat_logprobs(v: CatalogVersion, ranked: Ranking, top: int) -> dict:
    """Chat logprobs: one entry per listed item (its ID and score), with ``top`` alternative items."""

    def entry(row: int, score: float) -> dict:
        sid = v.catalog.sid(row)
        return {"token": sid, "logprob": round(score, 6), "bytes": list(sid.encode())}

    alternatives = [entry(r, s) for r, s in ranked[:top]]
    return {"content": [{**entry(r, s), "top_logprobs": alternatives} for r, s in ranked], "refusal": None}


def json_schema_of(body: ChatBody) -> dict | None:
    """The schema a json_schema response must satisfy (None: none given), checked to be a schema."""
    fmt = body.response_format
    if fmt is None or fmt.type != "json_schema":
        return None
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise ApiError(400, "response_format.json_schema.schema is required", param="response_format")
    import jsonschema

    try:
        jsonschema.validators.validator_for(fmt.json_schema.schema_).check_schema(fmt.json_schema.schema_)
    except jsonschema.SchemaError as exc:
        raise ApiError(400, f"response_format.json_schema.schema is not a JSON schema: {exc.message}") from None
    return fmt.json_schema.schema_


def check_against(schema: dict | None, answer: dict) -> None:
    """Refuse (400) a json_schema the answer's fixed shape does not fit, rather than break it."""
    if schema is None:
        return
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(answer))
    if error is not None:
        raise ApiError(
            400,
            'this server answers with {"items": [{"item_id", "sid", "title", "score"}, ...]}, which the '
            f"response_format schema does not accept: {error.message}",
            param="response_format",
            code="unsupported_schema",
        )


class Handlers:
    """The routes' logic over one engine and the server's settings."""

    def __init__(self, engine: RankingEngine, settings: ServerSettings):
        self.engine = engine
        self.settings = settings
        # one catalog edit (write + reload) at a time: concurrent ones lost items and
        # answered for catalogs they were not in
        self._edit_lock = threading.Lock()

    # -- checks ------------------------------------------------------------------------------------
    @property
    def max_beams(self) -> int:
        return self.engine.settings.max_beams

    def check_model(self, name: str) -> None:
        if name != self.settings.model_name:
            raise ApiError(
                404,
                f"model {name!r} does not exist; this server serves {self.settings.model_name!r} (see /v1/models)",
                param="model",
                code="model_not_found",
            )

    def check_openai_request(self, body: CompletionBody | ChatBody) -> None:
        """The model name, and every OpenAI parameter genrec cannot honour left at its neutral value."""
        self.check_model(body.model)
        for name, (neutral, why) in _NEUTRAL.items():
            value = getattr(body, name, None)
            if value not in neutral:
                raise ApiError(
                    400, f"{name}={value!r} is not supported: {why}", param=name, code="unsupported_parameter"
                )

    def item_budget(self, max_tokens: int | None, v: CatalogVersion, param: str) -> int | None:
        """How many items ``max_tokens`` pays for (None: no limit); every item costs its ID's tokens."""
        if max_tokens is None:
            return None
        if max_tokens < v.catalog.depth:
            raise ApiError(
                400,
                f"{param}={max_tokens} cannot hold one item: an item ID is {v.catalog.depth} tokens",
                param=param,
            )
        return max_tokens // v.catalog.depth

    def at_most(self, count: int, key: str, param: str, what: str) -> None:
        """Refuse a request part over the limit ``serve.<key>``."""
        limit = getattr(self.settings.limits, key)
        if count > limit:
            raise ApiError(
                400,
                f"{param} has {count:,} {what}; this server accepts at most {limit:,} (serve.{key})",
                param=param,
                code="limit_exceeded",
            )

    def check_filters(self, filters: Filters | None) -> None:
        for name in ("item_ids", "exclude_item_ids"):
            ids = getattr(filters, name, None) if filters else None
            self.at_most(len(ids or ()), "max_exclude_items", f"filters.{name}", "item ids")

    def beams_for(self, k: int, num_beams: int | None, v: CatalogVersion, param: str) -> int:
        """The beam width for ``k`` items (``param`` names ``k`` in the request), or why not."""
        max_beams = self.max_beams
        if k < 1:
            raise ApiError(400, f"{param} must be at least 1", param=param)
        if k > len(v.catalog):
            raise ApiError(400, f"{param}={k} is more than the {len(v.catalog)} items in the catalog", param=param)
        if k > max_beams:
            raise ApiError(
                400,
                f"{param}={k} is above this server's maximum of {max_beams} "
                "(start `genrec serve` with a larger --max-beams)",
                param=param,
            )
        # 0 is a width, not "the default": only a missing num_beams means the default
        beams = max(k, self.settings.default_beams) if num_beams is None else num_beams
        if beams > max_beams or beams < k:
            raise ApiError(400, f"num_beams={beams} must be between {param}={k} and {max_beams}", param="num_beams")
        return min(beams, max_beams)

    def check_length(self, prompt: list[int], v: CatalogVersion, param: str = "prompt") -> None:
        # room for the answer of the request's own catalog version (a reload may change the depth)
        limit = self.engine.settings.context_length(self.engine.model_dir) - v.catalog.depth - 1
        if len(prompt) > limit:
            raise ApiError(
                400,
                f"the prompt is {len(prompt)} tokens; this server accepts at most {limit}",
                param=param,
                code="context_length_exceeded",
            )

    async def _rank(self, plan: Plan) -> Ranking:
        if plan.allow is not None and not plan.allow:
            return []  # the filters leave nothing to choose from: no search needed
        _, ranked = await self.engine.rank(
            plan.prompt,
            plan.k,
            plan.beams,
            exclude=plan.exclude,
            allow=plan.allow,
            version=plan.v,
            sampling=plan.sampling,
        )
        return ranked

    def envelope(self, kind: str, prompt_tokens: int, completion_tokens: int) -> dict:
        """The fields every OpenAI completion answer has."""
        return {
            "id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.settings.model_name,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    # -- read-only routes ---------------------------------------------------------------------------
    def health(self) -> tuple[int, dict]:
        """(HTTP status, body): 200 only when the engine is ready, so load balancers need no parsing."""
        v, state = self.engine.current, self.engine.state
        body: dict[str, Any] = {
            "status": state,
            "model": self.settings.model_name,
            "catalog_version": v.version,
            "items": len(v.catalog),
        }
        if state == "dead":
            body["error"] = self.engine.failure
        return (200 if state == "ready" else 503), body

    def model_card(self, name: str | None = None) -> dict:
        """The served model (``GET /v1/models/{name}``: 404 for any other name)."""
        if name is not None:
            self.check_model(name)
        return {
            "id": self.settings.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "genrec",
            "max_beams": self.max_beams,
        }

    def models(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    # -- completions --------------------------------------------------------------------------------
    def _completion_prompt(self, v: CatalogVersion, text: str) -> list[int]:
        # a raw chat-templated prompt is used as is; anything else is put in the trained template
        if text.lstrip().startswith("<|"):
            return self.engine.tokenizer(text, add_special_tokens=False)["input_ids"]
        return v.formatter.prompt_ids(text)

    def _plan_completions(self, body: CompletionBody, v: CatalogVersion, prompts: list[str], beams: int) -> list[Plan]:
        plans = []
        for text in prompts:
            ids = self._completion_prompt(v, text)
            self.check_length(ids, v)
            seen = [r for r in (v.catalog.index_of_sid(s) for s in _SID.findall(text)) if r is not None]
            exclude = excluded_rows(v, body.filters, set(seen) if body.exclude_seen else set())
            plans.append(Plan(v, ids, body.n, beams, exclude, allow_list(v, body.filters), body.sampling))
        return plans

    async def completions(self, body: CompletionBody) -> dict:
        """``n`` choices per prompt, one valid item each, best first."""
        self.check_openai_request(body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        self.at_most(len(prompts), "max_prompts", "prompt", "prompts")
        for text in prompts:
            self.at_most(len(text), "max_text_chars", "prompt", "characters")
        self.check_filters(body.filters)
        self.engine.require_ready()
        v = self.engine.current
        beams = self.beams_for(body.n, body.num_beams, v, "n")
        if not prompts or not all(p.strip() for p in prompts):
            raise ApiError(400, "prompt is empty: send a history of semantic IDs or a request in text", param="prompt")
        self.item_budget(body.max_tokens, v, "max_tokens")  # each choice is one item
        plans = await asyncio.to_thread(self._plan_completions, body, v, prompts, beams)
        choices, items = [], []
        for p_index, plan in enumerate(plans):
            ranked = await self._rank(plan)
            for j, (row, score) in enumerate(ranked):
                choice = {"index": p_index * body.n + j, "text": v.catalog.sid(row), "logprobs": None}
                if body.logprobs is not None:
                    choice["logprobs"] = completion_logprobs(v, row, score, ranked, body.logprobs)
                choices.append({**choice, "finish_reason": "stop"})
            items.append(items_of(v, ranked))
        out = self.envelope("text_completion", sum(len(p.prompt) for p in plans), len(choices) * v.catalog.depth)
        out.update(choices=choices, items=items[0] if len(items) == 1 else items)
        return out

    # -- chat ---------------------------------------------------------------------------------------
    def _plan_chat(self, body: ChatBody, v: CatalogVersion, k: int, beams: int) -> tuple[Plan, ChatRequest]:
        messages = [{"role": m.role, "content": m.text} for m in body.messages]
        req = read_conversation(messages, v.titles)
        exclude = excluded_rows(v, body.filters, set(req.exclude))
        allow = allow_list(v, body.filters, req.years)
        prompt = v.formatter.chat_prompt(req.liked, req.last_user_text)
        self.check_length(prompt, v, "messages")
        return Plan(v, prompt, k, beams, exclude, allow, body.sampling), req

    async def chat(self, body: ChatBody) -> dict:
        """One assistant message listing ``k`` items, with what was understood from the conversation."""
        self.check_openai_request(body)
        if body.n != 1:
            raise ApiError(400, "n must be 1 for chat; ask for more items with `k`", param="n")
        self.at_most(len(body.messages), "max_messages", "messages", "messages")
        for m in body.messages:
            self.at_most(len(m.text), "max_text_chars", "messages", "characters in one message")
        if not any(m.role == "user" and m.text.strip() for m in body.messages):
            raise ApiError(400, "messages hold no user message", param="messages")
        self.check_filters(body.filters)
        self.engine.require_ready()
        v = self.engine.current
        beams = self.beams_for(body.k, body.num_beams, v, "k")
        budget_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        budget = self.item_budget(
            body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens, v, budget_param
        )
        k = body.k if budget is None else min(body.k, budget)
        schema = json_schema_of(body)
        plan, req = await asyncio.to_thread(self._plan_chat, body, v, k, beams)
        ranked = await self._rank(plan)
        items = items_of(v, ranked)
        if body.response_format is not None and body.response_format.type != "text":
            content = json.dumps({"items": items})
            check_against(schema, {"items": items})
        else:
            content = render_answer(v.catalog, [r for r, _ in ranked], req.liked, req.years)
        out = self.envelope("chat.completion", len(plan.prompt), len(ranked) * v.catalog.depth)
        ids = v.catalog.item_ids
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": chat_logprobs(v, ranked, body.top_logprobs or 0) if body.logprobs else None,
            "finish_reason": "length" if k < body.k else "stop",
        }
        out.update(
            choices=[choice],
            items=items,
            understood={
                "liked": [ids[r] for r in req.liked],
                "rejected": [ids[r] for r in req.rejected],
                "excluded": len(plan.exclude),
                "years": {"min": req.years.low, "max": req.years.high} if req.years else None,
            },
        )
        return out

    # -- recommendations ----------------------------------------------------------------------------
    def _plan_recommendations(
        self, body: RecommendationBody, v: CatalogVersion, beams: int
    ) -> tuple[Plan, list[int], list[str]]:
        """(plan, history rows, unknown ids)."""
        known = [(i, v.catalog.get_index(str(i))) for i in body.history]
        unknown = [i for i, r in known if r is None]
        history = [r for _, r in known if r is not None]  # repeats stay: users do re-watch items
        years = None
        if body.text:
            req = read_conversation([{"role": "user", "content": body.text}], v.titles)
            seen = set(history)
            history += [r for r in req.liked if r not in seen]
            years = req.years
        if not history and not (body.text and body.text.strip()):
            if unknown:
                raise ApiError(
                    400,
                    f"none of the history's item ids is in the catalog: {unknown[:5]}",
                    param="history",
                    code="unknown_items",
                )
            raise ApiError(
                400, "history is empty and there is no text: send item ids or a request in text", param="history"
            )
        prompt = v.formatter.next_item_prompt(history) if history else v.formatter.prompt_ids(body.text or "")
        self.check_length(prompt, v, "history")
        exclude = excluded_rows(v, body.filters, set(history) if body.exclude_seen else set())
        return Plan(v, prompt, body.k, beams, exclude, allow_list(v, body.filters, years)), history, unknown

    async def recommendations(self, body: RecommendationBody) -> dict:
        """Items for an item-id history and/or free text; unknown ids are reported, not fatal."""
        self.at_most(len(body.history), "max_history_items", "history", "item ids")
        self.at_most(len(body.text or ""), "max_text_chars", "text", "characters")
        self.check_filters(body.filters)
        self.engine.require_ready()
        v = self.engine.current
        beams = self.beams_for(body.k, body.num_beams, v, "k")
        plan, history, unknown = await asyncio.to_thread(self._plan_recommendations, body, v, beams)
        ranked = await self._rank(plan)
        return {
            "object": "recommendations",
            "model": self.settings.model_name,
            "catalog_version": v.version,
            "items": items_of(v, ranked),
            "unknown_item_ids": unknown,
            "used_history": [v.catalog.item_ids[r] for r in history],
            "prompt": "history" if history else "text",
        }

    # -- catalog edits: blocking (embedding new items), so the app runs them in a worker thread ---
    def _run_dir(self) -> Path:
        run = self.settings.run_dir
        if run is None or not (run / "tokenize").is_dir():
            raise ApiError(
                400, "this server serves a bare model folder; catalog edits need the run folder", code="no_run_folder"
            )
        return run

    def _reload(self) -> dict:
        run = self.settings.run_dir
        if run is not None and (run / "tokenize" / "embedding.json").is_file():
            from genrec.tokenization.updates import catalog_lock

            # a `genrec items` command replaces the catalog's files one by one: read them between edits
            with catalog_lock(run):
                v = self.engine.reload_catalog()
        else:
            v = self.engine.reload_catalog()
        return {"catalog_version": v.version, "items": len(v.catalog)}

    def reload(self) -> dict:
        """Serve RUN/model's catalog as it is on disk now."""
        with self._edit_lock:
            return self._reload()

    def add_items(self, body: NewItemsBody) -> dict:
        """Add items by text (IDs from the fitted codebooks), then reload.

        The answer's version is the first one that holds the new items (edits are serialized).
        """
        import pandas as pd

        from genrec.tokenization.updates import add_items

        if not body.items:
            raise ApiError(400, "items is empty", param="items")
        run = self._run_dir()
        frame = pd.DataFrame([item.row() for item in body.items])
        with self._edit_lock:
            added = add_items(run, frame)
            return {"added": [{"item_id": i, "sid": s} for i, s in added], **self._reload()}

    def remove_items(self, body: RemoveItemsBody) -> dict:
        """Remove items by id, then reload (unknown ids remove nothing and are a 400)."""
        from genrec.tokenization.updates import remove_items

        if not body.item_ids:
            raise ApiError(400, "item_ids is empty", param="item_ids")
        run = self._run_dir()
        ids = list(dict.fromkeys(body.item_ids))
        with self._edit_lock:
            remove_items(run, ids)
            return {"removed": ids, **self._reload()}
