"""`genrec serve` under faults, over a real socket (issue 19's blocking defects).

Most tests run uvicorn in a thread of the test process (:func:`serve_app`, the function
`genrec serve` runs) over the HF engine, so a fault can be injected through the engine
interface; one starts a real `genrec serve --backend hf` process (SIGTERM), and a slow one a
vLLM server whose engine-core process is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import copy_run
from fastapi.testclient import TestClient
from test_routes import AUTH, KEY, wait_ready

from genrec.config import EngineConfig, ServeConfig
from genrec.serving.app import ENGINE_DIED_EXIT, create_app, serve_app
from genrec.serving.engine import EngineDeadError, HFEngine
from genrec.serving.handlers import ServerSettings
from genrec.tokenization.catalog import Catalog


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(trained_demo_run, tmp_path_factory) -> Path:
    """A copy of the trained run for servers that do not edit the catalog (they write RUN/serve)."""
    return copy_run(trained_demo_run, tmp_path_factory.mktemp("faults") / "demo")


def _app(run: Path, engine_class: type[HFEngine] = HFEngine, **limits):
    engine = engine_class(run / "model", EngineConfig(max_beams=30), run / "serve")
    return create_app(engine, ServerSettings("demo", run, KEY, 10, limits=ServeConfig(**limits))), engine


@contextlib.contextmanager
def served(app, **config) -> Iterator[tuple[str, Future]]:
    """Run ``app`` as `genrec serve` does (:func:`serve_app`), in a thread: (base URL, its exit status).

    Returns once the port accepts connections, which is before the engine is ready.
    """
    port = _free_port()
    pool = ThreadPoolExecutor(1)
    status = pool.submit(serve_app, app, ServeConfig(port=port, shutdown_timeout_s=5, **config))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            httpx.get(base + "/health", timeout=5)
            break
        except httpx.TransportError:
            assert not status.done(), f"the server ended: {status.result()}"
            assert time.time() < deadline, "the port did not open"
            time.sleep(0.05)
    try:
        yield base, status
    finally:
        if not status.done():
            app.state.stop_server()
        status.result(timeout=60)
        pool.shutdown()


def _wait_ready(base: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while (r := httpx.get(base + "/health", timeout=5)).status_code != 200:
        assert r.json()["status"] == "starting", r.text
        assert time.time() < deadline, "the engine did not get ready"
        time.sleep(0.05)


def _connection(r: httpx.Response) -> tuple:
    """The client's address of the connection a response came over."""
    return r.extensions["network_stream"].get_extra_info("client_addr")


# -- 1. one request must not freeze the server ------------------------------------------------------
def test_a_huge_message_does_not_freeze_the_server(run):
    """2 MB of "I loved Inception": resolved in linear time, off the event loop; /health answers meanwhile."""
    app, _ = _app(run, max_body_bytes=4_000_000, max_text_chars=3_000_000)
    text = "I loved Inception " * 111_111
    with served(app) as (base, _), ThreadPoolExecutor(1) as pool:
        _wait_ready(base)
        big = pool.submit(
            httpx.post, base + "/v1/recommendations", json={"text": text, "k": 5}, headers=AUTH, timeout=300
        )
        slowest, polls = 0.0, 0
        while not big.done():
            started = time.perf_counter()
            assert httpx.get(base + "/health", timeout=10).status_code == 200
            slowest, polls = max(slowest, time.perf_counter() - started), polls + 1
            time.sleep(0.05)
        r = big.result()
    assert r.status_code == 200, r.text
    assert r.json()["used_history"] == ["1375666"] and len(r.json()["items"]) == 5
    assert polls > 0 and slowest < 5  # the quadratic matcher on the event loop held it for minutes


def test_bodies_over_the_limit_get_413_and_the_connection_stays_usable(run):
    app, _ = _app(run, max_body_bytes=100_000)
    with served(app) as (base, _), httpx.Client(base_url=base, headers=AUTH, timeout=60) as c:
        _wait_ready(base)
        ok = c.post("/v1/recommendations", json={"history": ["0468569"], "k": 3})
        assert ok.status_code == 200
        declared = c.post("/v1/recommendations", json={"history": ["0468569"], "text": "x" * 2_000_000})
        chunked = c.post("/v1/recommendations", content=iter([b'{"text": "'] + [b"x" * 65_536] * 32 + [b'"}']))
        for r in (declared, chunked):
            assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
            assert "serve.max_body_bytes" in r.json()["error"]["message"]
        again = c.post("/v1/recommendations", json={"history": ["0468569"], "k": 3})
        assert again.status_code == 200 and _connection(again) == _connection(ok)


def test_sigterm_stops_a_real_server_promptly_with_status_0(run):
    port = _free_port()
    with open(run / "sigterm.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "genrec.cli", "serve", str(run), "--backend", "hf", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GENREC_API_KEY": KEY, "OMP_NUM_THREADS": "1"},
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 180
            while True:
                assert proc.poll() is None, (run / "sigterm.log").read_text()[-3000:]
                assert time.time() < deadline, "the server did not get ready"
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(base + "/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            # an idle keep-alive connection must not hold the shutdown up
            with httpx.Client(base_url=base, headers=AUTH) as c:
                assert c.post("/v1/recommendations", json={"history": ["0468569"], "k": 3}).status_code == 200
                started = time.time()
                proc.send_signal(signal.SIGTERM)
                status = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert status == 0, (run / "sigterm.log").read_text()[-3000:]
    assert time.time() - started < 15


# -- 2. /health reflects the engine -----------------------------------------------------------------
class _GatedEngine(HFEngine):
    """An engine whose start waits for the test: the server must answer meanwhile."""

    gate: threading.Event

    def start(self) -> None:
        assert self.gate.wait(120)
        super().start()


def test_the_port_answers_while_the_engine_starts(run):
    _GatedEngine.gate = threading.Event()
    app, engine = _app(run, _GatedEngine)
    with served(app) as (base, _):
        r = httpx.get(base + "/health")
        assert r.status_code == 503 and r.json()["status"] == "starting"
        r = httpx.post(base + "/v1/recommendations", json={"history": ["0468569"]}, headers=AUTH)
        assert r.status_code == 503 and "starting" in r.json()["error"]["message"]
        engine.gate.set()
        _wait_ready(base)
        assert httpx.get(base + "/health").json()["status"] == "ready"
        r = httpx.post(base + "/v1/recommendations", json={"history": ["0468569"], "k": 3}, headers=AUTH, timeout=60)
        assert r.status_code == 200


class _DyingEngine(HFEngine):
    """An engine whose process "dies" under the first ranking request, as vLLM's engine core can."""

    async def rank(self, *args, **kwargs):
        self.mark_dead("the engine process died (injected)")
        raise EngineDeadError("the engine process died", "this server is exiting; retry elsewhere")


def test_an_engine_death_answers_503_and_the_server_exits_non_zero(run, caplog):
    app, _ = _app(run, _DyingEngine)
    with served(app) as (base, status):
        _wait_ready(base)
        r = httpx.post(base + "/v1/recommendations", json={"history": ["0468569"]}, headers=AUTH, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        assert "died" in r.json()["error"]["message"]
        assert status.result(timeout=30) == ENGINE_DIED_EXIT
    assert any("exiting with status 3" in rec.getMessage() for rec in caplog.records)


def test_a_dead_engine_is_reported_by_health_and_refuses_requests(run):
    app, engine = _app(run)
    with TestClient(app, headers=AUTH) as c:
        wait_ready(c)
        engine.mark_dead("the engine process died (injected)")
        deadline = time.time() + 10
        while app.state.exit_status == 0:  # the supervisor notices within its poll interval
            assert time.time() < deadline
            time.sleep(0.05)
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "dead"
        assert r.json()["error"] == "the engine process died (injected)"
        for path, body in [
            ("/v1/recommendations", {"history": ["0468569"]}),
            ("/v1/chat/completions", {"model": "demo", "messages": [{"role": "user", "content": "I liked Heat"}]}),
            ("/v1/completions", {"model": "demo", "prompt": "I liked Heat"}),
        ]:
            r = c.post(path, json=body)
            assert r.status_code == 503 and "the engine is dead" in r.json()["error"]["message"], r.text
    assert app.state.exit_status == ENGINE_DIED_EXIT


class _BrokenEngine(HFEngine):
    def start(self) -> None:
        raise OSError("cannot read /secret/weights.safetensors")


def test_an_engine_that_fails_to_start_makes_the_server_exit_non_zero(run, caplog):
    app, _ = _app(run, _BrokenEngine)
    with ThreadPoolExecutor(1) as pool:  # not `served`: the server may be gone before a first request
        status = pool.submit(serve_app, app, ServeConfig(port=_free_port())).result(timeout=60)
    assert status == ENGINE_DIED_EXIT
    assert [r.getMessage() for r in caplog.records if r.exc_info] == ["the engine failed to start"]


# -- 3. concurrent catalog edits --------------------------------------------------------------------
def test_concurrent_catalog_edits_all_land_and_every_answer_tells_the_truth(trained_demo_run, tmp_path):
    run = copy_run(trained_demo_run, tmp_path / "demo")
    before = Catalog.load(run / "model").item_ids
    new_ids, removed = [f"concurrent-{i}" for i in range(4)], ["0468569", "0120338"]
    app, _ = _app(run)
    with served(app) as (base, _), ThreadPoolExecutor(5) as pool:
        _wait_ready(base)
        first = httpx.get(base + "/health").json()["catalog_version"]

        def post(path: str, body: dict) -> httpx.Response:
            return httpx.post(base + path, json=body, headers=AUTH, timeout=600)

        adds = [{"items": [{"item_id": i, "title": f"{i} (2026)", "genres": "Drama"}]} for i in new_ids]
        edits = [pool.submit(post, "/v1/catalog/items", body) for body in adds]
        edits.append(pool.submit(post, "/v1/catalog/remove", {"item_ids": removed}))
        answers = [f.result() for f in edits]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        final = Catalog.load(run / "model").item_ids
        assert sorted(final) == sorted(set(before) - set(removed) | set(new_ids))
        # each answer names a version of its own, holding its edit: sizes step by +1 per add, -2 for the remove
        steps = sorted((a.json()["catalog_version"], a.json()["items"], "added" in a.json()) for a in answers)
        assert len({v for v, _, _ in steps}) == 5 and steps[0][0] > first
        size = len(before)
        for _, items, is_add in steps:
            size += 1 if is_add else -len(removed)
            assert items == size
        health = httpx.get(base + "/health").json()
        assert (health["catalog_version"], health["items"]) == (steps[-1][0], len(final))
        # the served catalog is the edited one
        r = post("/v1/recommendations", {"history": ["1375666"], "k": 4, "filters": {"item_ids": new_ids}})
        assert sorted(i["item_id"] for i in r.json()["items"]) == sorted(new_ids)
        r = post("/v1/recommendations", {"history": ["1375666"], "filters": {"item_ids": removed}})
        assert r.status_code == 400 and "unknown item id" in r.json()["error"]["message"]
    # a restarted server never gives another catalog a number already used
    restarted = HFEngine(run / "model", state_dir=run / "serve")
    assert restarted.current.version > steps[-1][0]


# -- 4. a 500 keeps the connection and names no internals -------------------------------------------
class _FaultyEngine(HFEngine):
    """An engine with a bug that k=7 triggers."""

    async def rank(self, prompt, k, *args, **kwargs):
        if k == 7:
            raise RuntimeError("boom at /secret/path/weights.bin")
        return await super().rank(prompt, k, *args, **kwargs)


def test_a_500_keeps_the_connection_is_logged_once_and_names_no_internals(run, caplog):
    app, _ = _app(run, _FaultyEngine)
    records: list[logging.LogRecord] = []
    catch = logging.Handler(logging.ERROR)
    catch.emit = records.append  # uvicorn's loggers do not propagate to caplog
    with served(app) as (base, _), httpx.Client(base_url=base, headers=AUTH, timeout=60) as c:
        _wait_ready(base)
        logging.getLogger("uvicorn.error").addHandler(catch)
        try:
            with caplog.at_level(logging.ERROR):
                failed = c.post("/v1/recommendations", json={"history": ["0468569"], "k": 7})
                ok = c.post("/v1/recommendations", json={"history": ["0468569"], "k": 5})
                same_connection = _connection(ok) == _connection(failed)
        finally:
            logging.getLogger("uvicorn.error").removeHandler(catch)
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
    assert not any(word in failed.text for word in ("boom", "secret", "RuntimeError", "Traceback"))
    assert failed.headers.get("connection") != "close"
    assert ok.status_code == 200 and same_connection
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR] + records
    assert len(errors) == 1 and errors[0].name == "genrec.serving.app", [e.getMessage() for e in errors]
    assert "boom" in str(errors[0].exc_info[1])


# -- vLLM: a killed engine-core process -------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_vllm_engine_core_makes_the_server_answer_503_and_exit(trained_demo_run, tmp_path):
    pytest.importorskip("vllm")
    psutil = pytest.importorskip("psutil")
    run = copy_run(trained_demo_run, tmp_path / "demo")
    port, base = _free_port(), None
    with open(run / "server.log", "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "genrec.cli",
                "serve",
                str(run),
                "--backend",
                "vllm",
                "--port",
                str(port),
                "--max-beams",
                "30",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GENREC_API_KEY": KEY},
        )
        base = f"http://127.0.0.1:{port}"
        try:
            states = _health_states_until_ready(proc, base, run / "server.log")
            assert "starting" in states  # the port answered while vLLM loaded
            children = psutil.Process(proc.pid).children(recursive=True)
            cores = [p for p in children if "EngineCore" in " ".join(p.cmdline())]
            assert cores, [p.cmdline() for p in children]
            for p in cores:
                p.kill()
            with contextlib.suppress(httpx.TransportError):  # it may have exited already
                r = httpx.post(base + "/v1/recommendations", json={"history": ["0468569"]}, headers=AUTH, timeout=30)
                assert r.status_code == 503, r.text
            status = proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert status == ENGINE_DIED_EXIT, (run / "server.log").read_text()[-3000:]
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]


def _health_states_until_ready(proc: subprocess.Popen, base: str, log: Path) -> set[str]:
    states: set[str] = set()
    deadline = time.time() + 600
    while "ready" not in states:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "the server did not get ready in 10 minutes"
        with contextlib.suppress(httpx.TransportError):
            states.add(httpx.get(base + "/health", timeout=2).json()["status"])
        time.sleep(0.5)
    return states
