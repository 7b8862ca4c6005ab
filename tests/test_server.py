"""`genrec serve` end to end on vLLM: a real server process on 127.0.0.1, the official openai client.

Only what needs the vLLM engine (its ranking equals the HF one; exclusions, allow-lists and
catalog versions reach the engine process) and a real socket is tested here; every route's
rules are tested in process, on the HF engine, in tests/test_routes.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import copy_run

from genrec.decoding.conversation import title_year
from genrec.decoding.hf import GenerativeRecommender

openai = pytest.importorskip("openai")
pytest.importorskip("vllm")

KEY = "sk-genrec-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_demo_run, tmp_path_factory):
    """(base URL, run folder, process) of a running `genrec serve` on a writable copy of the trained run."""
    run = copy_run(trained_demo_run, tmp_path_factory.mktemp("serve") / "demo")
    port = _free_port()
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
                "--api-key",
                KEY,
                "--max-beams",
                "30",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GENREC_API_KEY": ""},
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("server exited at start:\n" + (run / "server.log").read_text()[-3000:])
            try:
                if httpx.get(base + "/health", timeout=2).json().get("status") == "ready":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(2)
        else:
            proc.kill()
            pytest.fail("server did not come up in 10 minutes")
        yield base, run, proc
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0)


def _post(server, path, body=None, key=KEY, content=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if content is not None:
        headers["content-type"] = "application/json"
        return httpx.post(server[0] + path, content=content, headers=headers, timeout=120)
    return httpx.post(server[0] + path, json=body, headers=headers, timeout=120)


def test_completions_return_n_valid_ranked_items_like_hf(server, client, trained_demo_run):
    models = client.models.list().data
    assert [m.id for m in models] == ["demo"]
    hf = GenerativeRecommender.from_folder(trained_demo_run / "model")
    history = [10, 200, 30]
    text = hf.formatter.next_item_text(history)
    r = client.completions.create(model="demo", prompt=text, n=5, extra_body={"num_beams": 10})
    assert len(r.choices) == 5
    items = r.model_extra["items"]
    assert [c.text for c in r.choices] == [i["sid"] for i in items]
    assert all(hf.catalog.index_of_sid(c.text) is not None for c in r.choices)
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True) and len({i["item_id"] for i in items}) == 5
    # vLLM's log-probabilities are normalised over the whole vocabulary
    want = hf.recommend([history], k=5, num_beams=10, softmax="vocabulary")[0]
    assert [i["item_id"] for i in items] == [w.item_id for w in want]
    assert all(abs(i["score"] - w.score) < 1e-3 for i, w in zip(items, want))
    # exclude_seen: the items written in the prompt never come back
    seen_prompt = hf.formatter.next_item_text([hf.catalog.index(items[0]["item_id"])])
    r = client.completions.create(model="demo", prompt=seen_prompt, n=10, extra_body={"exclude_seen": True})
    assert items[0]["sid"] not in [c.text for c in r.choices] and len(r.choices) == 10


def test_temperature_draws_distinct_valid_items_on_the_vllm_engine(server, client, trained_demo_run):
    """Sampling mode on vLLM: one engine request with n sequences per round, masked to the trie."""
    hf = GenerativeRecommender.from_folder(trained_demo_run / "model")
    text = hf.formatter.next_item_text([10, 200, 30])
    body = {"model": "demo", "prompt": text, "n": 8, "temperature": 1.0, "seed": 5}
    first, again = (_post(server, "/v1/completions", body).json() for _ in range(2))
    ids = [i["item_id"] for i in first["items"]]
    assert len(set(ids)) == 8 and all(hf.catalog.get_index(i) is not None for i in ids)
    assert ids == [i["item_id"] for i in again["items"]]  # seeded
    scores = [i["score"] for i in first["items"]]
    assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    filters = {"item_ids": ids[:5], "exclude_item_ids": ids[:1]}
    r = _post(server, "/v1/completions", {**body, "n": 4, "filters": filters}).json()
    assert sorted(i["item_id"] for i in r["items"]) == sorted(ids[1:5])


def test_chat_exclusions_and_years_apply_inside_the_vllm_engine(server, client):
    first = [{"role": "user", "content": "I loved Inception and The Prestige; something lighter?"}]
    r = client.chat.completions.create(model="demo", messages=first, extra_body={"k": 5})
    assert r.model_extra["understood"]["liked"] == ["1375666", "0482571"]  # Inception, The Prestige
    items = r.model_extra["items"]
    assert len(items) == 5 and not {"1375666", "0482571"} & {i["item_id"] for i in items}
    second = first + [
        {"role": "assistant", "content": r.choices[0].message.content},
        {"role": "user", "content": "Not that one. Something older?"},
    ]
    r2 = client.chat.completions.create(model="demo", messages=second, extra_body={"k": 5})
    items2, limit = r2.model_extra["items"], r2.model_extra["understood"]["years"]["max"]
    assert len(items2) == 5 and not {i["item_id"] for i in items} & {i["item_id"] for i in items2}
    assert all(title_year(i["title"]) <= limit for i in items2)


def test_errors_and_auth_over_a_real_socket(server):
    r = _post(server, "/v1/completions", content="{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    bad = openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(server[0] + "/health", timeout=5).json()["status"] == "ready"


def test_catalog_edits_reach_the_vllm_engine_process(server, client):
    """Each catalog version's trie reaches the engine process: new items can be emitted, removed ones never."""
    history = {"history": ["0468569"], "k": 5}
    before = _post(server, "/v1/recommendations", history).json()["items"]
    top = before[0]["item_id"]
    r = _post(
        server,
        "/v1/catalog/items",
        {"items": [{"item_id": "new-galaxy-heist", "title": "Galaxy Heist (2026)", "genres": "Action|Sci-Fi"}]},
    )
    assert r.status_code == 200, r.text
    r = _post(server, "/v1/recommendations", {**history, "k": 2, "filters": {"item_ids": ["new-galaxy-heist", top]}})
    assert {i["item_id"] for i in r.json()["items"]} == {"new-galaxy-heist", top}
    r = _post(server, "/v1/catalog/remove", {"item_ids": [top, "new-galaxy-heist"]})
    assert r.status_code == 200, r.text
    after = _post(server, "/v1/recommendations", history).json()["items"]
    assert top not in [i["item_id"] for i in after] and len(after) == 5
    r = client.completions.create(model="demo", prompt="History: " + before[1]["sid"] + ". Next item?", n=30)
    assert top not in [i["item_id"] for i in r.model_extra["items"]]


def test_sigterm_stops_the_server_and_its_engine_processes(server):
    """Last in this module: it stops the shared server. vLLM's engine-core process must not be orphaned."""
    psutil = pytest.importorskip("psutil")
    proc = server[2]
    children = psutil.Process(proc.pid).children(recursive=True)
    assert any("EngineCore" in " ".join(p.cmdline()) for p in children), [p.cmdline() for p in children]
    started = time.time()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    assert time.time() - started < 60
