"""`genrec serve`: an OpenAI-compatible HTTP front end over a :class:`RankingEngine`.

Routes (all JSON; errors use OpenAI's ``{"error": {"message", "type", "param", "code"}}``):

``GET  /health``                 engine state (starting / ready / dead; 200 only when ready),
                                 catalog version and size (no API key needed)
``GET  /v1/models``              the served model (``/v1/models/{id}``: one model, or 404)
``POST /v1/completions``         prompt (a history of semantic IDs, or any text) -> ``n`` choices,
                                 one valid item each, best first
``POST /v1/chat/completions``    a conversation -> one assistant message listing ``k`` items
``POST /v1/recommendations``     item-id history and/or text, ``k``, ``exclude_seen``, filters
``POST /v1/catalog/reload``      re-read RUN/model's catalog (after ``genrec items add/remove``)
``POST /v1/catalog/items``       add items by text (IDs from the fitted codebooks), then reload
``POST /v1/catalog/remove``      remove items by id, then reload

Every answer that names items also carries them structured under ``items``:
``item_id``, ``sid``, ``title``, ``score`` (sum of the ID tokens' log-probabilities).

Life cycle: the port is bound first and the engine loads in the background (``/health``
says ``starting``); SIGTERM stops accepting connections, lets requests in flight finish
(``serve.shutdown_timeout_s``), stops the engine (and vLLM's engine processes) and exits 0;
when the engine dies the server answers 503 and exits with :data:`ENGINE_DIED_EXIT`, for a
supervisor to restart it.

This module is only wiring: bodies live in :mod:`genrec.serving.protocol`, the logic in
:mod:`genrec.serving.handlers`, the engines in :mod:`genrec.serving.engine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from genrec.config import EngineConfig, ServeConfig
from genrec.errors import GenrecError, InputError, NotReadyError
from genrec.exported import is_exported
from genrec.serving.engine import EngineSupervisor, HFEngine, RankingEngine, RecommendationEngine
from genrec.serving.handlers import Handlers, ServerSettings, chat_chunks, completion_chunks, sse
from genrec.serving.protocol import (
    CatalogState,
    ChatBody,
    ChatCompletionResponse,
    CompletionBody,
    CompletionResponse,
    ErrorResponse,
    Health,
    ItemsAdded,
    ItemsRemoved,
    ModelCard,
    ModelList,
    NewItemsBody,
    RecommendationBody,
    RecommendationsResponse,
    RemoveItemsBody,
    error_body,
)

log = logging.getLogger(__name__)

Backend = Literal["auto", "vllm", "hf"]


def resolve_backend(backend: Backend) -> Literal["vllm", "hf"]:
    """``auto``: vLLM on a CUDA machine, the HF engine on CPUs.

    On CPUs the HF engine is the faster server: it prefills a prompt once and decodes every
    beam of every in-flight request together, while the vLLM path sends one engine request
    per beam per ID token, and each recomputes the prompt's last partial KV block
    (docs/benchmarks.md: 3-4x the throughput at 16 clients, latency at the compute floor).
    """
    if backend not in ("auto", "vllm", "hf"):
        raise InputError(f"unknown backend {backend!r}", "use --backend auto, vllm or hf")
    if backend != "auto":
        return backend
    import torch

    return "vllm" if torch.cuda.is_available() else "hf"


#: routes that change the catalog: they need ``serve.admin_key`` when one is set
ADMIN_PREFIX = "/v1/catalog/"

#: exit status of a server whose engine died (uvicorn uses 3 for a failed start as well)
ENGINE_DIED_EXIT = 3

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# -- errors -----------------------------------------------------------------------------------------
def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """(message, param) for the first problem pydantic found, in OpenAI's terms."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON: " + str(first.get("ctx", {}).get("error", "")).strip(), None
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    if first.get("type") == "extra_forbidden":
        return f"unknown parameter {where!r}: see GET /docs for the parameters this server takes", where or None
    return f"{where or 'body'}: {first.get('msg', 'invalid request')}", where or None


def _http_message(request: Request, exc: StarletteHTTPException) -> str:
    """What went wrong, for the HTTP errors Starlette and FastAPI raise themselves."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return "the request body is not valid JSON: it is not UTF-8 text"
    if isinstance(cause, RecursionError):
        return "the request body is not valid JSON: it is nested too deeply"
    if exc.status_code == 404:
        return f"{request.method} {request.url.path} is not a route of this server"
    if exc.status_code == 405:
        return f"{request.url.path} does not accept {request.method}"
    return str(exc.detail)


def _install_error_handling(app: FastAPI) -> None:
    """Every error becomes an OpenAI-style body, with the status its kind calls for."""

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, 400, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        return JSONResponse(error_body(_http_message(request, exc), status), status_code=status, headers=exc.headers)

    @app.exception_handler(GenrecError)
    async def _genrec_error(request: Request, exc: GenrecError) -> JSONResponse:
        status = exc.http_status
        if status >= 500 and not isinstance(exc, NotReadyError):
            log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
        body = exc.body() if hasattr(exc, "body") else error_body(str(exc), status)
        return JSONResponse(body, status_code=status)


async def _answer(send: Send, status: int, body: dict) -> None:
    """A complete JSON answer, straight over ASGI (with a length: the connection stays usable)."""
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class _Guard:
    """Pure ASGI middleware in front of every route: API key, body size, unexpected faults.

    * The key is checked before the body is read: an unauthenticated client costs no memory.
    * The body is read here, up to ``max_body_bytes``, before any route sees it: a declared
      length over the limit is answered 413 unread, a streamed (chunked) one when it crosses
      it. The route then gets the buffered body.
    * An exception no handler took is logged once, here, and answered 500 with a message that
      names no internals, as a complete response: the client's keep-alive connection stays
      usable. (Starlette's own last-resort handler re-raises to the ASGI server, which logs
      the traceback again and closes the connection.)
    """

    def __init__(self, app: Callable, api_key: str | None, max_body_bytes: int, admin_key: str | None = None):
        self.app = app
        self.user_key = f"Bearer {api_key}".encode() if api_key else None
        self.admin_key = f"Bearer {admin_key}".encode() if admin_key else None
        self.max_body_bytes = max_body_bytes

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """(status, message, code) when the request's key may not call its route, else None.

        Keys are compared in constant time (``hmac.compare_digest``): a timing difference
        would tell an attacker how many leading characters of a guess are right.
        """
        path = scope["path"]
        if path == "/health":  # stays open: load balancers and start-up scripts need no key
            return None
        sent = dict(scope["headers"]).get(b"authorization", b"")
        is_admin = self.admin_key is not None and hmac.compare_digest(sent, self.admin_key)
        is_user = self.user_key is not None and hmac.compare_digest(sent, self.user_key)
        if path.startswith(ADMIN_PREFIX) and self.admin_key is not None:
            if is_admin:
                return None
            if is_user:
                return 403, "the catalog routes need the admin key (serve.admin_key), not the API key", "admin_only"
            return 401, "invalid or missing admin key: send `Authorization: Bearer <admin key>`", "invalid_api_key"
        if self.user_key is None or is_user or is_admin:
            return None
        return 401, "invalid or missing API key: send `Authorization: Bearer <key>`", "invalid_api_key"

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None when it is over the limit (or the client left)."""
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            status, message, code = refusal
            kind = "permission_error" if status == 403 else None
            return await _answer(send, status, error_body(message, status, code=code, kind=kind))
        body = await self._read_body(scope, receive)
        if body is None:
            limit = self.max_body_bytes
            message = f"the request body is over this server's limit of {limit:,} bytes (serve.max_body_bytes)"
            return await _answer(send, 413, error_body(message, 413, code="request_too_large"))
        await self._call(scope, _replay(body, receive), send)

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when a graceful shutdown runs out of
            # time: tell their clients to retry (503) instead of a bare 500 from the ASGI server
            if started:
                raise
            log.warning("%s %s cancelled: the server is shutting down", scope["method"], scope["path"])
            await _answer(send, 503, error_body("the server is shutting down; retry the request", 503))
        except Exception:
            log.exception("%s %s failed", scope["method"], scope["path"])
            if not started:  # otherwise the ASGI server ends the half-sent answer
                message = "internal server error; the server log has the details"
                await _answer(send, 500, error_body(message, 500))


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the buffered body once, then waits on the client (disconnects)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


# -- routes and life cycle --------------------------------------------------------------------------
#: the error answers every route may give, for the OpenAPI document
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in (
        (400, "A bad request: the message names the parameter and the fix."),
        (401, "A missing or wrong key."),
        (413, "A body over serve.max_body_bytes."),
        (503, "The engine is starting, dead or stopping: retry when /health answers 200."),
    )
}
_ADMIN_ERRORS = {**_ERRORS, 403: {"model": ErrorResponse, "description": "The API key on an admin route."}}
_MODEL_ERRORS = {**_ERRORS, 404: {"model": ErrorResponse, "description": "Not this server's model."}}
_STREAMED = {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "With stream=true."}


def _stream(chunks: list[dict]) -> StreamingResponse:
    return StreamingResponse(iter(sse(chunks)), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _add_routes(app: FastAPI, h: Handlers) -> None:
    @app.get("/health", response_model=Health, responses={503: {"model": Health, "description": "Not ready."}})
    async def health() -> JSONResponse:
        status, body = h.health()
        return JSONResponse(body, status_code=status)

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def models() -> dict:
        return h.models()

    @app.get(
        "/v1/models/{model_id:path}",
        response_model=ModelCard,
        responses=_MODEL_ERRORS,
    )
    async def model(model_id: str) -> dict:
        return h.model_card(model_id)

    @app.post("/v1/completions", response_model=CompletionResponse, responses={**_MODEL_ERRORS, 200: _STREAMED})
    async def completions(body: CompletionBody) -> Any:
        answer = await h.completions(body)
        if body.stream:
            return _stream(completion_chunks(answer, bool(body.stream_options and body.stream_options.include_usage)))
        return answer

    @app.post(
        "/v1/chat/completions", response_model=ChatCompletionResponse, responses={**_MODEL_ERRORS, 200: _STREAMED}
    )
    async def chat(body: ChatBody) -> Any:
        answer = await h.chat(body)
        if body.stream:
            return _stream(chat_chunks(answer, bool(body.stream_options and body.stream_options.include_usage)))
        return answer

    @app.post("/v1/recommendations", response_model=RecommendationsResponse, responses=_ERRORS)
    async def recommendations(body: RecommendationBody) -> dict:
        return await h.recommendations(body)

    # plain `def`s: FastAPI runs them in a worker thread, so embedding new items does not stall decoding
    @app.post("/v1/catalog/reload", response_model=CatalogState, responses=_ADMIN_ERRORS)
    def reload() -> dict:
        return h.reload()

    @app.post("/v1/catalog/items", response_model=ItemsAdded, responses=_ADMIN_ERRORS)
    def add(body: NewItemsBody) -> dict:
        return h.add_items(body)

    @app.post("/v1/catalog/remove", response_model=ItemsRemoved, responses=_ADMIN_ERRORS)
    def remove(body: RemoveItemsBody) -> dict:
        return h.remove_items(body)


def _declare_security(app: FastAPI) -> None:
    """The OpenAPI document declares the bearer keys (checked by :class:`_Guard`, not by FastAPI)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            # bad bodies are answered 400 in OpenAI's error shape (see _install_error_handling), never
            # with FastAPI's 422 that get_openapi lists for every route with a body
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "serve.api_key (or serve.admin_key)"}
            }
            for path, operations in schema["paths"].items():
                if path != "/health":
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _engine_died(app: FastAPI, reason: str) -> None:
    """Answer 503 from now on (the engine refuses) and stop the server, which then exits non-zero."""
    log.error("%s: exiting with status %d so that a supervisor restarts the server", reason, ENGINE_DIED_EXIT)
    app.state.exit_status = ENGINE_DIED_EXIT
    if app.state.stop_server is not None:
        app.state.stop_server()


def create_app(engine: RankingEngine, settings: ServerSettings) -> FastAPI:
    """The FastAPI app. Its lifespan starts the engine in the background (the server answers
    meanwhile: /health says "starting"), watches it, and stops it with the server.

    ``app.state.stop_server`` (set by :func:`serve_app`) is called when the engine dies;
    ``app.state.exit_status`` is then :data:`ENGINE_DIED_EXIT`.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        supervisor = EngineSupervisor(engine, lambda reason: _engine_died(app, reason))
        # not awaited here: the port opens now and /health says "starting" until the engine is up
        task = asyncio.create_task(supervisor.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # stops vLLM's engine-core process too (a start still under way stops when it ends)
            engine.shutdown()

    app = FastAPI(title="genrec", version=_version(), lifespan=lifespan)
    app.state.exit_status = 0
    app.state.stop_server = None
    _install_error_handling(app)
    limits = settings.limits
    app.add_middleware(
        _Guard, api_key=settings.api_key, max_body_bytes=limits.max_body_bytes, admin_key=limits.admin_key
    )
    if limits.cors_origins:
        # outside the guard: a browser's preflight carries no key, and refusals need CORS headers to be readable
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(limits.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    _add_routes(app, Handlers(engine, settings))
    _declare_security(app)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("genrec")
    except PackageNotFoundError:
        return "0"


def _locate(path: Path) -> tuple[Path | None, Path]:
    """(run folder or None, exported model folder) for a run folder or a bare RUN/model folder."""
    if is_exported(path / "model"):
        return path, path / "model"
    if is_exported(path):
        return (path.parent if (path.parent / "tokenize").is_dir() else None), path
    raise InputError(
        f"{path} holds no exported genrec model", "pass a run folder after `genrec train`, or its RUN/model folder"
    )


def build_app(
    path: str | Path, config: ServeConfig | None = None, engine: EngineConfig | None = None, backend: Backend = "auto"
) -> FastAPI:
    """The app `genrec serve` runs for RUN (a run folder with RUN/model) or a bare exported model folder.

    The engine is created here (its catalog loaded) but started by the app's lifespan (vLLM
    spawns its engine process then; the HF engine loads the weights). Its state (catalog
    version numbers, vLLM's tries) lives in RUN/serve (MODEL/serve for a bare folder).
    """
    config = config or ServeConfig()
    run, model_dir = _locate(Path(path))
    settings = engine or EngineConfig()
    state_dir = (run or model_dir) / "serve"
    backend = resolve_backend(backend)
    if backend == "vllm":
        ranking: RecommendationEngine | HFEngine = RecommendationEngine(model_dir, state_dir, settings)
    elif backend == "hf":
        ranking = HFEngine(model_dir, settings, state_dir)
    else:
        raise AssertionError(backend)  # resolve_backend refused it
    beams = config.num_beams or int(ranking.prompt_settings.get("num_beams") or 20)
    name = config.model_name or (run or model_dir).resolve().name
    server = ServerSettings(name, run, config.api_key, min(beams, settings.max_beams), limits=config)
    return create_app(ranking, server)


@contextlib.contextmanager
def _sigterm_exits_cleanly() -> Iterator[None]:
    """Let a SIGTERM-ed server exit 0 after uvicorn's graceful shutdown.

    uvicorn handles SIGTERM itself, then re-raises it once it has restored the handler it
    found: with the default handler the process would die of the signal (status 143), which a
    supervisor reads as a crash. It finds this no-op handler instead.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only (a server run from a test's thread)
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve_app(app: FastAPI, config: ServeConfig | None = None) -> int:
    """Run ``app`` with uvicorn until SIGTERM/SIGINT or the engine's death; the exit status.

    0 after a signal, :data:`ENGINE_DIED_EXIT` when the engine died.
    """
    import uvicorn

    config = config or ServeConfig()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="info",
            timeout_graceful_shutdown=config.shutdown_timeout_s,
        )
    )
    app.state.stop_server = lambda: setattr(server, "should_exit", True)
    with _sigterm_exits_cleanly():
        server.run()
    return app.state.exit_status


def serve(
    path: str | Path, config: ServeConfig | None = None, engine: EngineConfig | None = None, backend: Backend = "auto"
) -> None:
    """Run the server (blocking) for RUN or a bare exported model folder.

    Returns after SIGTERM/SIGINT; exits with :data:`ENGINE_DIED_EXIT` when the engine died.
    """
    config = config or ServeConfig()
    app = build_app(path, config, engine, backend)
    genrec_log = logging.getLogger("genrec")
    if not genrec_log.handlers:
        # uvicorn configures only its own loggers and vLLM the root one (message only): genrec's
        # errors get their level and source, in uvicorn's style
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        genrec_log.addHandler(handler)
        genrec_log.setLevel(logging.INFO)
        genrec_log.propagate = False
    status = serve_app(app, config)
    if status:
        raise SystemExit(status)
