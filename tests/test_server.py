"""`genrec serve` end to end: a real server process on 127.0.0.1, the official openai client, raw HTTP."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import copy_run
from genrec.serving.conversation import title_year
from genrec.serving.recommender import Recommender

openai = pytest.importorskip("openai")
pytest.importorskip("vllm")

KEY = "sk-genrec-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_demo_run, tmp_path_factory):
    """(base URL, run folder) of a running `genrec serve` on a writable copy of the trained run."""
    run = copy_run(trained_demo_run, tmp_path_factory.mktemp("serve") / "demo")
    port = _free_port()
    log = open(run / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "genrec.cli", "serve", str(run), "--port", str(port),
                             "--api-key", KEY, "--max-beams", "30"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "GENREC_API_KEY": ""})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("server exited at start:\n" + (run / "server.log").read_text()[-3000:])
        try:
            if httpx.get(base + "/health", timeout=2).json().get("status") == "ok":
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(2)
    else:
        proc.kill()
        pytest.fail("server did not come up in 10 minutes")
    yield base, run
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


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
    hf = Recommender.from_folder(trained_demo_run / "model")
    history = [10, 200, 30]
    text = hf.formatter.next_item_text(history)
    r = client.completions.create(model="demo", prompt=text, n=5, extra_body={"num_beams": 10})
    assert len(r.choices) == 5
    items = r.model_extra["items"]
    assert [c.text for c in r.choices] == [i["sid"] for i in items]
    assert all(hf.catalog.index_of_sid(c.text) is not None for c in r.choices)
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True) and len({i["item_id"] for i in items}) == 5
    want = hf.recommend([history], k=5, num_beams=10)[0]
    assert [i["item_id"] for i in items] == [w.item_id for w in want]
    assert all(abs(i["score"] - w.score) < 1e-3 for i, w in zip(items, want))
    # exclude_seen: the items written in the prompt never come back
    seen_prompt = hf.formatter.next_item_text([hf.catalog.index(items[0]["item_id"])])
    r = client.completions.create(model="demo", prompt=seen_prompt, n=10, extra_body={"exclude_seen": True})
    assert items[0]["sid"] not in [c.text for c in r.choices] and len(r.choices) == 10


def test_chat_resolves_titles_and_refines_across_turns(server, client):
    first = [{"role": "user", "content": "I loved Inception and The Prestige; something lighter?"}]
    r = client.chat.completions.create(model="demo", messages=first, extra_body={"k": 5})
    understood = r.model_extra["understood"]
    assert understood["liked"] == ["1375666", "0482571"]  # Inception, The Prestige
    answer = r.choices[0].message.content
    items = r.model_extra["items"]
    assert len(items) == 5 and "Inception (2010)" in answer
    assert all(i["title"] in answer and i["item_id"] in answer for i in items)
    assert not {"1375666", "0482571"} & {i["item_id"] for i in items}
    # turn 2: "not that one" + older: nothing from turn 1 again, all older than what was shown
    second = first + [{"role": "assistant", "content": answer},
                      {"role": "user", "content": "Not that one. Something older?"}]
    r2 = client.chat.completions.create(model="demo", messages=second, extra_body={"k": 5})
    items2 = r2.model_extra["items"]
    assert len(items2) == 5
    assert not {i["item_id"] for i in items} & {i["item_id"] for i in items2}
    shown = sorted(title_year(i["title"]) for i in items)
    limit = r2.model_extra["understood"]["years"]["max"]
    assert limit < shown[2] + 1 and all(title_year(i["title"]) <= limit for i in items2)
    # turn 3: an explicit decade
    third = second + [{"role": "assistant", "content": r2.choices[0].message.content},
                      {"role": "user", "content": "Anything from the 80s?"}]
    items3 = client.chat.completions.create(model="demo", messages=third, extra_body={"k": 5}).model_extra["items"]
    assert items3 and all(1980 <= title_year(i["title"]) <= 1989 for i in items3)


def test_recommendations_endpoint_reports_unknown_ids_and_applies_filters(server):
    r = _post(server, "/v1/recommendations", {"history": ["0468569", "no-such-item"], "k": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unknown_item_ids"] == ["no-such-item"] and body["used_history"] == ["0468569"]
    assert len(body["items"]) == 8 and "0468569" not in [i["item_id"] for i in body["items"]]
    allow = [i["item_id"] for i in body["items"][3:]] + ["0120338"]
    r = _post(server, "/v1/recommendations", {"history": ["0468569"], "k": 6, "filters": {"item_ids": allow}})
    assert sorted(i["item_id"] for i in r.json()["items"]) == sorted(allow)
    r = _post(server, "/v1/recommendations", {"text": "I liked Titanic", "k": 5,
                                               "filters": {"year_min": 2000, "year_max": 2005}})
    assert r.status_code == 200 and r.json()["used_history"] == ["0120338"]
    assert all(2000 <= title_year(i["title"]) <= 2005 for i in r.json()["items"])


@pytest.mark.parametrize("path,body,status,needle", [
    ("/v1/completions", "{not json", 400, "not valid JSON"),
    ("/v1/completions", '{"model": "gpt-4", "prompt": "hi"}', 404, "does not exist"),
    ("/v1/completions", '{"model": "demo", "prompt": "hi", "n": 31}', 400, "maximum of 30"),
    ("/v1/completions", '{"model": "demo", "prompt": "hi", "n": 0}', 400, "at least 1"),
    ("/v1/completions", '{"model": "demo", "prompt": ""}', 400, "prompt is empty"),
    ("/v1/completions", '{"model": "demo"}', 400, "prompt"),
    ("/v1/completions", '{"model": "demo", "prompt": "' + "word " * 1500 + '"}', 400, "accepts at most"),
    ("/v1/chat/completions", '{"model": "demo", "messages": []}', 400, "no user message"),
    ("/v1/chat/completions", '{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "n": 3}', 400, "n must be 1"),
    ("/v1/recommendations", '{"history": []}', 400, "history is empty"),
    ("/v1/recommendations", '{"history": ["nope1", "nope2"]}', 400, "none of the history"),
    ("/v1/recommendations", '{"history": ["0468569"], "k": 5000}', 400, "items in the catalog"),
    ("/v1/recommendations", '{"history": ["0468569"], "filters": {"item_ids": ["zzz"]}}', 400, "unknown item id"),
    ("/v1/recommendations", '{"history": ["0468569"], "colour": "red"}', 400, "colour"),
])
def test_bad_input_gets_an_openai_style_4xx_and_the_server_keeps_serving(server, path, body, status, needle):
    r = _post(server, path, content=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]
    assert httpx.get(server[0] + "/health", timeout=5).json()["status"] == "ok"


def test_api_key_is_required(server):
    bad = openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.get(server[0] + "/v1/models", timeout=5)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_catalog_updates_reach_the_running_server(server, client):
    base, run = server
    history = {"history": ["0468569"], "k": 5}
    before = _post(server, "/v1/recommendations", history).json()["items"]
    top = before[0]["item_id"]
    # a new item, by text: it gets a semantic ID from the fitted codebooks and can be recommended
    r = _post(server, "/v1/catalog/items", {"items": [
        {"item_id": "new-galaxy-heist", "title": "Galaxy Heist (2026)", "genres": "Action|Sci-Fi"}]})
    assert r.status_code == 200, r.text
    added = r.json()
    assert re.fullmatch(r"(<[a-z]_\d+>){4}", added["added"][0]["sid"]) and added["catalog_version"] >= 1
    r = _post(server, "/v1/recommendations", {**history, "k": 2, "filters": {"item_ids": ["new-galaxy-heist", top]}})
    assert {i["item_id"] for i in r.json()["items"]} == {"new-galaxy-heist", top}
    # the exported model folder follows, so `genrec recommend` sees it as well
    assert "new-galaxy-heist" in (run / "model" / "catalog.parquet").read_bytes().decode("latin-1")
    # removing the top item: it is never emitted again, even when it is the best match
    r = _post(server, "/v1/catalog/remove", {"item_ids": [top, "new-galaxy-heist"]})
    assert r.status_code == 200, r.text
    n_items = r.json()["items"]
    after = _post(server, "/v1/recommendations", history).json()["items"]
    assert top not in [i["item_id"] for i in after] and len(after) == 5
    r = client.completions.create(model="demo", prompt="History: " + before[1]["sid"] + ". Next item?", n=30)
    assert top not in [i["item_id"] for i in r.model_extra["items"]]
    r = _post(server, "/v1/recommendations", {**history, "filters": {"item_ids": [top]}})
    assert r.status_code == 400 and "unknown item id" in r.json()["error"]["message"]
    # `genrec items add` on the run, then a reload, without restarting
    (run / "new.jsonl").write_text('{"item_id": "cli-item", "title": "Quiet Harbor (2025)", "genres": "Drama"}\n')
    res = subprocess.run([sys.executable, "-m", "genrec.cli", "items", "add", str(run), str(run / "new.jsonl")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    r = _post(server, "/v1/catalog/reload", {})
    assert r.status_code == 200 and r.json()["items"] == n_items + 1
    r = _post(server, "/v1/recommendations", {**history, "k": 1, "filters": {"item_ids": ["cli-item"]}})
    assert [i["item_id"] for i in r.json()["items"]] == ["cli-item"]
