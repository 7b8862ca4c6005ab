"""`genrec serve`: an OpenAI-compatible HTTP front end over :class:`RecommendationEngine`.

Routes (all JSON; errors use OpenAI's ``{"error": {"message", "type", "param", "code"}}``):

``GET  /health``                 liveness, catalog version and size (no API key needed)
``GET  /v1/models``              the served model
``POST /v1/completions``         prompt (a history of semantic IDs, or any text) -> ``n`` choices,
                                 one valid item each, best first
``POST /v1/chat/completions``    a conversation -> one assistant message listing ``k`` items
``POST /v1/recommendations``     item-id history and/or text, ``k``, ``exclude_seen``, filters
``POST /v1/catalog/reload``      re-read RUN/model's catalog (after ``genrec items add/remove``)
``POST /v1/catalog/items``       add items by text (IDs from the fitted codebooks), then reload
``POST /v1/catalog/remove``      remove items by id, then reload

Every answer that names items also carries them structured under ``items``:
``item_id``, ``sid``, ``title``, ``score`` (sum of the ID tokens' log-probabilities).
"""

from __future__ import annotations

import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from genrec.errors import GenrecError
from genrec.serving.conversation import ChatRequest, YearRange, read_conversation, render_answer
from genrec.serving.engine import CatalogVersion, RecommendationEngine
from genrec.serving.recommender import Recommendation

_SID = re.compile(r"(?:<[a-z]_\d+>)+")


class ApiError(Exception):
    """An error answered to the client (4xx) with an OpenAI-style body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# -- request bodies (unknown fields are allowed: OpenAI clients send many) --------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class Filters(BaseModel):
    """Restrictions applied inside decoding."""

    model_config = ConfigDict(extra="forbid")
    item_ids: list[str] | None = Field(None, description="Choose only among these items.")
    exclude_item_ids: list[str] | None = Field(None, description="Never return these items.")
    year_min: int | None = Field(None, description="Only items whose title year is >= this.")
    year_max: int | None = Field(None, description="Only items whose title year is <= this.")


class CompletionBody(_Body):
    model: str
    prompt: str | list[str]
    n: int = Field(1, description="Items (choices) per prompt, best first.")
    num_beams: int | None = Field(None, description="Beam width (default: the run's, at least n).")
    exclude_seen: bool = Field(False, description="Never return items whose IDs appear in the prompt.")
    filters: Filters | None = None
    stream: bool = False


class ChatBody(_Body):
    model: str
    messages: list[dict[str, Any]]
    n: int = Field(1, description="Must be 1; ask for more items with k.")
    k: int = Field(5, description="Items listed in the answer.")
    num_beams: int | None = None
    filters: Filters | None = None
    stream: bool = False


class RecommendationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[str] = Field(default_factory=list, description="The user's item ids, oldest first.")
    text: str | None = Field(None, description="Free text: titles the user liked, wishes.")
    k: int = 10
    num_beams: int | None = None
    exclude_seen: bool = True
    filters: Filters | None = None


class NewItemsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[dict[str, Any]] = Field(..., description="Each with item_id, title and the run's text fields.")


class RemoveItemsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_ids: list[str]


@dataclass
class ServerSettings:
    """What `genrec serve` was started with."""

    model_name: str
    run_dir: Path | None  # RUN (for catalog edits), None when serving a bare model folder
    api_key: str | None = None
    default_beams: int = 20


def _items(v: CatalogVersion, ranked: list[tuple[int, float]]) -> list[dict]:
    return [r.to_dict() for r in Recommendation.rows(v.catalog, ranked)]


def create_app(engine: RecommendationEngine, settings: ServerSettings):
    """The FastAPI app; the engine is started and stopped with the app's lifespan."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @asynccontextmanager
    async def lifespan(app):
        if engine.llm is None:
            engine.start()
        yield
        engine.shutdown()

    app = FastAPI(title="genrec", lifespan=lifespan)
    max_beams = engine.settings.max_beams

    # -- errors -------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            msg = "the request body is not valid JSON: " + str(first.get("ctx", {}).get("error", "")).strip()
            where = ""
        else:
            msg = f"{where or 'body'}: {first.get('msg', 'invalid request')}"
        return JSONResponse(ApiError(400, msg, param=where or None).body(), status_code=400)

    @app.exception_handler(GenrecError)
    async def _genrec_error(request: Request, exc: GenrecError):
        return JSONResponse(ApiError(400, str(exc)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}: {exc}",
                                     kind="server_error").body(), status_code=500)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if settings.api_key and request.url.path != "/health":
            if request.headers.get("authorization", "") != f"Bearer {settings.api_key}":
                err = ApiError(401, "invalid or missing API key: send `Authorization: Bearer <key>`",
                               code="invalid_api_key", kind="authentication_error")
                return JSONResponse(err.body(), status_code=401)
        return await call_next(request)

    # -- helpers ------------------------------------------------------------------------------
    def check_model(name: str) -> None:
        if name != settings.model_name:
            raise ApiError(404, f"model {name!r} does not exist; this server serves {settings.model_name!r} "
                                "(see /v1/models)", param="model", code="model_not_found")

    def beams_for(k: int, num_beams: int | None, v: CatalogVersion, param: str) -> int:
        if k < 1:
            raise ApiError(400, f"{param} must be at least 1", param=param)
        if k > len(v.catalog):
            raise ApiError(400, f"{param}={k} is more than the {len(v.catalog)} items in the catalog", param=param)
        if k > max_beams:
            raise ApiError(400, f"{param}={k} is above this server's maximum of {max_beams} "
                                "(start `genrec serve` with a larger --max-beams)", param=param)
        beams = num_beams or max(k, settings.default_beams)
        if beams > max_beams or beams < k:
            raise ApiError(400, f"num_beams={beams} must be between {param}={k} and {max_beams}", param="num_beams")
        return min(beams, max_beams)

    def check_length(prompt: list[int], v: CatalogVersion, param: str = "prompt") -> None:
        # room for the answer of the request's own catalog version (a reload may change the depth)
        limit = engine.settings.context_length(engine.model_dir) - v.catalog.depth - 1
        if len(prompt) > limit:
            raise ApiError(400, f"the prompt is {len(prompt)} tokens; this server accepts at most {limit}",
                           param=param, code="context_length_exceeded")

    def rows_of(v: CatalogVersion, ids: list[str] | None, param: str) -> list[int]:
        rows, unknown = [], []
        for i in ids or []:
            r = v.catalog.get_index(str(i))
            (unknown if r is None else rows).append(str(i) if r is None else r)
        if unknown:
            raise ApiError(400, f"unknown item id(s) in {param}: {unknown[:5]}", param=param)
        return rows

    def allow_list(v: CatalogVersion, filters: Filters | None, years: YearRange | None = None) -> list[int] | None:
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

    def check_openai_request(body: CompletionBody | ChatBody) -> None:
        check_model(body.model)
        if body.stream:
            raise ApiError(400, "streaming is not supported: items are ranked only when the search ends",
                           param="stream")

    def excluded_rows(v: CatalogVersion, filters: Filters | None, base: set[int]) -> list[int]:
        """``base`` plus the filters' exclude_item_ids, as sorted catalog rows."""
        exclude = set(base)
        if filters and filters.exclude_item_ids:
            exclude |= set(rows_of(v, filters.exclude_item_ids, "filters.exclude_item_ids"))
        return sorted(exclude)

    async def rank(v, prompt, k, beams, exclude, allow):
        if allow is not None and not allow:
            return []
        _, ranked = await engine.rank(prompt, k, beams, exclude=exclude, allow=allow, version=v)
        return ranked

    def envelope(kind: str, prompt_tokens: int, completion_tokens: int) -> dict:
        return {"id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}",
                "object": kind, "created": int(time.time()), "model": settings.model_name,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    # -- routes -------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        v = engine.current
        return {"status": "ok" if engine.llm is not None else "starting", "model": settings.model_name,
                "catalog_version": v.version, "items": len(v.catalog)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "genrec", "max_beams": max_beams}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        check_openai_request(body)
        v = engine.current
        beams = beams_for(body.n, body.num_beams, v, "n")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or not all(p.strip() for p in prompts):
            raise ApiError(400, "prompt is empty: send a history of semantic IDs or a request in text", param="prompt")
        out = envelope("text_completion", 0, 0)
        choices, items, used = [], [], 0
        for p_index, text in enumerate(prompts):
            # a raw chat-templated prompt is used as is; anything else is put in the trained template
            ids = (engine.tokenizer(text, add_special_tokens=False)["input_ids"] if text.lstrip().startswith("<|")
                   else v.formatter.prompt_ids(text))
            check_length(ids, v)
            used += len(ids)
            seen = [r for r in (v.catalog.index_of_sid(s) for s in _SID.findall(text)) if r is not None]
            exclude = excluded_rows(v, body.filters, set(seen) if body.exclude_seen else set())
            ranked = await rank(v, ids, body.n, beams, exclude, allow_list(v, body.filters))
            for j, (row, score) in enumerate(ranked):
                choices.append({"index": p_index * body.n + j, "text": v.catalog.sid(row), "logprobs": None,
                                "finish_reason": "stop"})
            items.append(_items(v, ranked))
        out.update(choices=choices, items=items[0] if len(items) == 1 else items,
                   usage={"prompt_tokens": used, "completion_tokens": len(choices) * v.catalog.depth,
                          "total_tokens": used + len(choices) * v.catalog.depth})
        return out

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody):
        check_openai_request(body)
        if body.n != 1:
            raise ApiError(400, "n must be 1 for chat; ask for more items with `k`", param="n")
        if not any(m.get("role") == "user" and m.get("content") for m in body.messages):
            raise ApiError(400, "messages hold no user message", param="messages")
        v = engine.current
        beams = beams_for(body.k, body.num_beams, v, "k")
        req: ChatRequest = read_conversation(body.messages, v.titles)
        exclude = excluded_rows(v, body.filters, set(req.exclude))
        allow = allow_list(v, body.filters, req.years)
        if req.liked:
            prompt = v.formatter.next_item_prompt(req.liked)  # the task every run is trained on
        else:
            prompt = v.formatter.prompt_ids(req.last_user_text)
        check_length(prompt, v, "messages")
        ranked = await rank(v, prompt, body.k, beams, exclude, allow)
        content = render_answer(v.catalog, [r for r, _ in ranked], req.liked, req.years)
        out = envelope("chat.completion", len(prompt), len(ranked) * v.catalog.depth)
        c = v.catalog
        out.update(choices=[{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                   items=_items(v, ranked),
                   understood={"liked": [c.item_ids[r] for r in req.liked],
                               "rejected": [c.item_ids[r] for r in req.rejected],
                               "excluded": len(exclude),
                               "years": {"min": req.years.low, "max": req.years.high} if req.years else None})
        return out

    @app.post("/v1/recommendations")
    async def recommendations(body: RecommendationBody):
        v = engine.current
        beams = beams_for(body.k, body.num_beams, v, "k")
        known = [(i, v.catalog.get_index(str(i))) for i in body.history]
        unknown = [i for i, r in known if r is None]
        history = [r for _, r in known if r is not None]
        years = None
        if body.text:
            req = read_conversation([{"role": "user", "content": body.text}], v.titles)
            history += [r for r in req.liked if r not in history]
            years = req.years
        if not history and not (body.text and body.text.strip()):
            if unknown:
                raise ApiError(400, f"none of the history's item ids is in the catalog: {unknown[:5]}",
                               param="history", code="unknown_items")
            raise ApiError(400, "history is empty and there is no text: send item ids or a request in text",
                           param="history")
        prompt = (v.formatter.next_item_prompt(history) if history else v.formatter.prompt_ids(body.text or ""))
        check_length(prompt, v, "history")
        exclude = excluded_rows(v, body.filters, set(history) if body.exclude_seen else set())
        ranked = await rank(v, prompt, body.k, beams, exclude, allow_list(v, body.filters, years))
        return {"object": "recommendations", "model": settings.model_name, "catalog_version": v.version,
                "items": _items(v, ranked), "unknown_item_ids": unknown,
                "used_history": [v.catalog.item_ids[r] for r in history],
                "prompt": "history" if history else "text"}

    # -- catalog changes ----------------------------------------------------------------------
    def run_dir() -> Path:
        if settings.run_dir is None or not (settings.run_dir / "tokenize").is_dir():
            raise ApiError(400, "this server serves a bare model folder; catalog edits need the run folder",
                           code="no_run_folder")
        return settings.run_dir

    def reloaded() -> dict:
        v = engine.reload_catalog()
        return {"catalog_version": v.version, "items": len(v.catalog)}

    @app.post("/v1/catalog/reload")
    async def reload():
        return reloaded()

    # plain `def`: FastAPI runs these in a worker thread, so embedding new items does not stall decoding
    @app.post("/v1/catalog/items")
    def add(body: NewItemsBody):
        import pandas as pd

        from genrec.tokenization.updates import add_items
        if not body.items:
            raise ApiError(400, "items is empty", param="items")
        if not all("item_id" in x for x in body.items):
            raise ApiError(400, "every item needs an item_id", param="items")
        frame = pd.DataFrame(body.items)
        frame["item_id"] = frame["item_id"].astype(str)
        added = add_items(run_dir(), frame)
        return {"added": [{"item_id": i, "sid": s} for i, s in added], **reloaded()}

    @app.post("/v1/catalog/remove")
    def remove(body: RemoveItemsBody):
        from genrec.tokenization.updates import remove_items
        if not body.item_ids:
            raise ApiError(400, "item_ids is empty", param="item_ids")
        remove_items(run_dir(), body.item_ids)
        return {"removed": body.item_ids, **reloaded()}

    return app


def serve(path: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          model_name: str | None = None, settings=None, default_beams: int | None = None) -> None:
    """Run the server for RUN (a run folder with RUN/model) or a bare exported model folder."""
    import uvicorn

    from genrec.serving.vllm_backend import EngineSettings

    path = Path(path)
    if (path / "model" / "genrec.json").is_file():
        run, model_dir = path, path / "model"
    elif (path / "genrec.json").is_file():
        run, model_dir = (path.parent if (path.parent / "tokenize").is_dir() else None), path
    else:
        raise GenrecError(f"{path} holds no exported genrec model", "pass a run folder after `genrec train`, "
                          "or its RUN/model folder")
    state_dir = (run or model_dir) / "serve"
    engine = RecommendationEngine(model_dir, state_dir, settings or EngineSettings())
    beams = default_beams or int(engine.prompt_settings.get("num_beams") or 20)
    app = create_app(engine, ServerSettings(model_name or (run or model_dir).resolve().name, run, api_key,
                                            min(beams, engine.settings.max_beams)))
    uvicorn.run(app, host=host, port=port, log_level="info")
