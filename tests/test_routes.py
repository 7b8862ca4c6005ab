"""The HTTP routes of `genrec serve`, in process: FastAPI's TestClient over the HF engine.

Everything the front end decides (validation, auth, errors and their statuses, filters,
chat exclusions, catalog edits, limits) is engine-agnostic, so it is tested here without vLLM;
tests/test_server.py keeps the end-to-end checks that need a real vLLM server, and
tests/test_serving_faults.py the faults that need a real socket or process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_run, wait_ready
from fastapi.testclient import TestClient

from genrec.config import EngineConfig, ServeConfig
from genrec.decoding.conversation import title_year
from genrec.decoding.hf import GenerativeRecommender
from genrec.errors import InternalError
from genrec.serving.app import build_app, create_app
from genrec.serving.engine import HFEngine, RankingEngine, RecommendationEngine
from genrec.serving.handlers import ServerSettings
from genrec.tokenization.catalog import Catalog

KEY = "sk-genrec-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _app(path: Path, api_key: str | None = KEY, **limits):
    config = ServeConfig(model_name="demo", api_key=api_key, **limits)
    return build_app(path, config, EngineConfig(max_beams=30), backend="hf")


@pytest.fixture(scope="module")
def client(trained_demo_run, tmp_path_factory):
    """A started app over a copy of the trained run (the server writes its state in RUN/serve)."""
    run = copy_run(trained_demo_run, tmp_path_factory.mktemp("routes") / "demo")
    with TestClient(_app(run), headers=AUTH) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def hf(trained_demo_run) -> GenerativeRecommender:
    return GenerativeRecommender.from_folder(trained_demo_run / "model")


def _openai(client: TestClient, key: str = KEY):
    """The official client, talking to the in-process app through the TestClient transport."""
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=str(client.base_url) + "/v1", api_key=key, http_client=client, max_retries=0)


def test_engines_implement_the_ranking_interface(trained_demo_run, tmp_path):
    assert isinstance(HFEngine(trained_demo_run / "model"), RankingEngine)
    # building the vLLM engine only loads the catalog: vLLM itself starts in start()
    vllm_engine = RecommendationEngine(trained_demo_run / "model", tmp_path / "serve")
    assert isinstance(vllm_engine, RankingEngine) and not vllm_engine.ready
    assert (vllm_engine.current.trie_dir / "trie.npz").is_file()


def test_vllm_engine_keeps_a_versions_trie_while_a_request_decodes_on_it(trained_demo_run, tmp_path):
    """Reloads under load deleted the trie folder of a version still decoding (the engine process
    then refused those requests: 500s during catalog edits). A version's folder now lives as long
    as a request holds it, and one retired before its request began is written again."""
    run = copy_run(trained_demo_run, tmp_path / "demo")
    engine = RecommendationEngine(run / "model", run / "serve")
    v0 = engine.current
    with engine._holding(v0):
        v1, v2 = engine.reload_catalog(), engine.reload_catalog()
        assert (v0.trie_dir / "trie.npz").is_file()  # still decoding on it
        assert not v1.trie_dir.exists() and (v2.trie_dir / "trie.npz").is_file()  # nobody on v1
    assert not v0.trie_dir.exists() and (v2.trie_dir / "trie.npz").is_file()
    with engine._holding(v1):  # planned on v1 before the reloads, searched after
        assert (v1.trie_dir / "trie.npz").is_file()
    assert not v1.trie_dir.exists()


def test_hf_engine_scores_equal_the_generative_recommender(trained_demo_run, hf):
    engine = HFEngine(trained_demo_run / "model")
    engine.start()
    history = [10, 200, 30]
    prompt = hf.formatter.next_item_prompt(history)
    for exclude, allow in [(None, None), ([10, 200, 30], None), ([5], list(range(0, 400, 3)))]:
        v, ranked = asyncio.run(engine.rank(prompt, 5, 10, exclude=exclude, allow=allow))
        want = hf.recommend(
            [history],
            k=5,
            num_beams=10,
            exclude=None if exclude is None else [exclude],
            allow=None if allow is None else [allow],
        )[0]
        assert ranked == [(w.index, w.score) for w in want] and v is engine.current
    engine.shutdown()
    assert not engine.ready


def test_hf_engine_decodes_concurrent_searches_together_with_the_same_items(trained_demo_run, hf):
    """Searches that arrive while one decodes form the next batch; each keeps its own items."""
    engine = HFEngine(trained_demo_run / "model")
    engine.start()
    histories = [[10, 200, 30], [5, 6], [700, 701, 702, 703], [42]] * 3
    prompts = [hf.formatter.next_item_prompt(h) for h in histories]

    async def all_at_once():
        return await asyncio.gather(*[engine.rank(p, 5, 10, exclude=h) for p, h in zip(prompts, histories)])

    got = asyncio.run(all_at_once())
    assert engine.searches == len(histories) and engine.batches < len(histories)
    for (_, ranked), h in zip(got, histories):
        want = {w.index: w.score for w in hf.recommend([h], k=5, num_beams=10, exclude=[h])[0]}
        # left padding in a batch changes fp32 sums in the last digits: equal up to near-ties
        assert len(set(dict(ranked)) & set(want)) >= 4 and not set(dict(ranked)) & set(h)
        assert all(abs(s - want[i]) < 1e-4 for i, s in ranked if i in want)
    engine.shutdown()


def test_completions_return_n_valid_ranked_items_like_hf(client, hf):
    r = client.get("/v1/models")
    assert [m["id"] for m in r.json()["data"]] == ["demo"]
    history = [10, 200, 30]
    text = hf.formatter.next_item_text(history)
    r = client.post("/v1/completions", json={"model": "demo", "prompt": text, "n": 5, "num_beams": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["choices"]) == 5 and body["object"] == "text_completion"
    items = body["items"]
    assert [c["text"] for c in body["choices"]] == [i["sid"] for i in items]
    assert all(hf.catalog.index_of_sid(c["text"]) is not None for c in body["choices"])
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True) and len({i["item_id"] for i in items}) == 5
    want = hf.recommend([history], k=5, num_beams=10)[0]
    assert [i["item_id"] for i in items] == [w.item_id for w in want]
    assert [i["score"] for i in items] == [round(w.score, 6) for w in want]  # the same search, not just close
    assert body["usage"]["completion_tokens"] == 5 * hf.catalog.depth
    # exclude_seen: the items written in the prompt never come back
    seen_prompt = hf.formatter.next_item_text([hf.catalog.index(items[0]["item_id"])])
    r = client.post("/v1/completions", json={"model": "demo", "prompt": seen_prompt, "n": 10, "exclude_seen": True})
    choices = r.json()["choices"]
    assert items[0]["sid"] not in [c["text"] for c in choices] and len(choices) == 10


def test_the_official_client_reads_the_answers(client):
    oa = _openai(client)
    assert [m.id for m in oa.models.list().data] == ["demo"]
    r = oa.completions.create(model="demo", prompt="I liked Titanic", n=3)
    assert len(r.choices) == 3 and [c.text for c in r.choices] == [i["sid"] for i in r.model_extra["items"]]


def test_chat_resolves_titles_and_refines_across_turns(client):
    def chat(messages):
        r = client.post("/v1/chat/completions", json={"model": "demo", "messages": messages, "k": 5})
        assert r.status_code == 200, r.text
        return r.json()

    first = [{"role": "user", "content": "I loved Inception and The Prestige; something lighter?"}]
    r = chat(first)
    understood = r["understood"]
    assert understood["liked"] == ["1375666", "0482571"]  # Inception, The Prestige
    answer = r["choices"][0]["message"]["content"]
    items = r["items"]
    assert len(items) == 5 and "Inception (2010)" in answer
    assert all(i["title"] in answer and i["item_id"] in answer for i in items)
    assert not {"1375666", "0482571"} & {i["item_id"] for i in items}
    # turn 2: "not that one" + older: nothing from turn 1 again, all older than what was shown
    second = first + [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Not that one. Something older?"},
    ]
    r2 = chat(second)
    items2 = r2["items"]
    assert len(items2) == 5
    assert not {i["item_id"] for i in items} & {i["item_id"] for i in items2}
    shown = sorted(title_year(i["title"]) for i in items)
    limit = r2["understood"]["years"]["max"]
    assert limit < shown[2] + 1 and all(title_year(i["title"]) <= limit for i in items2)
    # turn 3: an explicit decade
    third = second + [
        {"role": "assistant", "content": r2["choices"][0]["message"]["content"]},
        {"role": "user", "content": "Anything from the 80s?"},
    ]
    items3 = chat(third)["items"]
    assert items3 and all(1980 <= title_year(i["title"]) <= 1989 for i in items3)


def test_chat_filters_exclude_items_and_years(client):
    first = [{"role": "user", "content": "I loved Inception and The Prestige; something lighter?"}]
    plain = client.post("/v1/chat/completions", json={"model": "demo", "messages": first, "k": 5}).json()["items"]
    banned = [i["item_id"] for i in plain[:2]]
    r = client.post(
        "/v1/chat/completions",
        json={"model": "demo", "messages": first, "k": 5, "filters": {"exclude_item_ids": banned, "year_max": 1999}},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert not set(banned) & {i["item_id"] for i in body["items"]}
    assert all(title_year(i["title"]) <= 1999 for i in body["items"])
    assert body["understood"]["excluded"] == 4  # the two liked titles and the two banned ids


def test_recommendations_endpoint_reports_unknown_ids_and_applies_filters(client):
    r = client.post("/v1/recommendations", json={"history": ["0468569", "no-such-item"], "k": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unknown_item_ids"] == ["no-such-item"] and body["used_history"] == ["0468569"]
    assert len(body["items"]) == 8 and "0468569" not in [i["item_id"] for i in body["items"]]
    allow = [i["item_id"] for i in body["items"][3:]] + ["0120338"]
    r = client.post("/v1/recommendations", json={"history": ["0468569"], "k": 6, "filters": {"item_ids": allow}})
    assert sorted(i["item_id"] for i in r.json()["items"]) == sorted(allow)
    r = client.post(
        "/v1/recommendations", json={"text": "I liked Titanic", "k": 5, "filters": {"year_min": 2000, "year_max": 2005}}
    )
    assert r.status_code == 200 and r.json()["used_history"] == ["0120338"]
    assert all(2000 <= title_year(i["title"]) <= 2005 for i in r.json()["items"])
    # filters that leave nothing: an empty answer, not an error
    r = client.post("/v1/recommendations", json={"history": ["0468569"], "filters": {"year_min": 3000}})
    assert r.status_code == 200 and r.json()["items"] == []


def _chat(content, role: str = "user") -> str:
    return json.dumps({"model": "demo", "messages": [{"role": role, "content": content}]})


def _chat_with(**params) -> str:
    return json.dumps({"model": "demo", "messages": [{"role": "user", "content": "I loved Heat"}], **params})


@pytest.mark.parametrize(
    "path,body,status,needle",
    [
        ("/v1/completions", "{not json", 400, "not valid JSON"),
        ("/v1/completions", '{"model": "gpt-4", "prompt": "hi"}', 404, "does not exist"),
        ("/v1/completions", '{"model": "demo", "prompt": "hi", "n": 31}', 400, "maximum of 30"),
        ("/v1/completions", '{"model": "demo", "prompt": "hi", "n": 0}', 400, "at least 1"),
        ("/v1/completions", '{"model": "demo", "prompt": ""}', 400, "prompt is empty"),
        ("/v1/completions", '{"model": "demo"}', 400, "prompt"),
        ("/v1/completions", '{"model": "demo", "prompt": "' + "word " * 1500 + '"}', 400, "accepts at most"),
        # OpenAI parameters genrec cannot honour are refused by name, never silently ignored
        ("/v1/completions", '{"model": "demo", "prompt": "hi", "stop": ["\\n"]}', 400, "stop=['\\n'] is not supported"),
        ("/v1/completions", '{"model": "demo", "prompt": "hi", "logit_bias": {"5": 2}}', 400, "logit_bias="),
        ("/v1/completions", '{"model": "demo", "prompt": "hi", "echo": true}', 400, "echo=True is not"),
        ("/v1/completions", '{"model": "demo", "prompt": "hi", "max_tokens": 2}', 400, "cannot hold one item"),
        ("/v1/completions", '{"model": "demo", "prompt": "hi", "temperature": 3}', 400, "temperature"),
        ("/v1/completions", '{"model": "demo", "prompt": "hi", "top_p": 0}', 400, "top_p"),
        ("/v1/completions", '{"model": "demo", "prompt": "hi", "best_of": 4}', 400, "best_of=4"),
        (
            "/v1/completions",
            '{"model": "demo", "prompt": "hi", "frobnicate": 1}',
            400,
            "unknown parameter 'frobnicate'",
        ),
        ("/v1/chat/completions", _chat_with(presence_penalty=0.5), 400, "presence_penalty=0.5 is not supported"),
        ("/v1/chat/completions", _chat_with(tools=[{"type": "function"}]), 400, "calls no tools"),
        ("/v1/chat/completions", _chat_with(max_completion_tokens=1), 400, "max_completion_tokens=1 cannot"),
        ("/v1/chat/completions", _chat_with(response_format={"type": "yaml"}), 400, "response_format.type"),
        (
            "/v1/chat/completions",
            _chat_with(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}),
            400,
            "not a JSON schema",
        ),
        (
            "/v1/chat/completions",
            _chat_with(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object", "required": ["movies"]}},
                }
            ),
            400,
            "does not accept",
        ),
        ("/v1/completions", '{"model": "demo", "prompt": "hi", "n": 5, "num_beams": 3}', 400, "num_beams=3"),
        ("/v1/chat/completions", '{"model": "demo", "messages": []}', 400, "no user message"),
        (
            "/v1/chat/completions",
            '{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "n": 3}',
            400,
            "n must be 1",
        ),
        ("/v1/recommendations", '{"history": []}', 400, "history is empty"),
        ("/v1/recommendations", '{"history": ["nope1", "nope2"]}', 400, "none of the history"),
        ("/v1/recommendations", '{"history": ["0468569"], "k": 5000}', 400, "items in the catalog"),
        ("/v1/recommendations", '{"history": ["0468569"], "filters": {"item_ids": ["zzz"]}}', 400, "unknown item id"),
        ("/v1/recommendations", '{"history": ["0468569"], "colour": "red"}', 400, "colour"),
        # issue 19, "other bad input": each was a 500, a silent default or FastAPI's error shape
        ("/v1/completions", '{"model": "demo", "prompt": "hi", "num_beams": 0}', 400, "num_beams=0"),
        ("/v1/recommendations", '{"history": ["0468569"], "num_beams": -3}', 400, "num_beams=-3"),
        ("/v1/chat/completions", _chat(5), 400, "content must be a string or a list"),
        ("/v1/chat/completions", _chat({"text": "Heat"}), 400, "content must be a string or a list"),
        ("/v1/chat/completions", _chat([{"type": "image_url", "image_url": {}}]), 400, "only text parts"),
        ("/v1/chat/completions", _chat([5]), 400, "only text parts"),
        ("/v1/chat/completions", _chat("hi", role="wizard"), 400, "messages.0.role"),
        ("/v1/chat/completions", '{"model": "demo", "messages": ["hi"]}', 400, "messages.0"),
        ("/v1/chat/completions", _chat(None), 400, "no user message"),
        ("/v1/completions", b'{"model": "demo", "prompt": "\xff\xfe caf\xe9"}', 400, "not UTF-8"),
        ("/v1/completions", '{"model": "demo", "prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", 400, "too deeply"),
        ("/v1/no-such-route", "{}", 404, "not a route"),
    ],
)
def test_bad_input_gets_an_openai_style_4xx_and_the_server_keeps_serving(client, path, body, status, needle):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]
    assert set(err) == {"message", "type", "param", "code"}
    assert client.get("/health").json()["status"] == "ready"


def test_chat_content_in_openai_parts(client):
    parts = [{"type": "text", "text": "I loved Inception"}, {"type": "text", "text": "and The Prestige"}]
    r = client.post("/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": parts}]})
    assert r.status_code == 200, r.text
    assert r.json()["understood"]["liked"] == ["1375666", "0482571"]


# -- OpenAI conformance ------------------------------------------------------------------------------
HEAT = [{"role": "user", "content": "I loved Heat and Inception"}]


def test_streamed_answers_equal_the_plain_ones(client):
    """stream=True: the same answer as server-sent events, read by the official client, then [DONE]."""
    oa = _openai(client)
    plain = oa.chat.completions.create(model="demo", messages=HEAT, extra_body={"k": 4})
    chunks = list(
        oa.chat.completions.create(
            model="demo", messages=HEAT, stream=True, stream_options={"include_usage": True}, extra_body={"k": 4}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens and not chunks[-1].choices
    assert [i["item_id"] for i in chunks[-2].model_extra["items"]] == [i["item_id"] for i in plain.model_extra["items"]]

    done = oa.completions.create(model="demo", prompt="I loved Heat", n=3)
    streamed = list(oa.completions.create(model="demo", prompt="I loved Heat", n=3, stream=True))
    assert [c.choices[0].text for c in streamed] == [c.text for c in done.choices]
    raw = client.post("/v1/completions", json={"model": "demo", "prompt": "I loved Heat", "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_logprobs_are_the_items_scores(client):
    r = client.post("/v1/completions", json={"model": "demo", "prompt": "I loved Heat", "n": 3, "logprobs": 2}).json()
    for choice, item in zip(r["choices"], r["items"]):
        lp = choice["logprobs"]
        assert lp["tokens"] == [item["sid"]] and lp["token_logprobs"] == [item["score"]]
        assert list(lp["top_logprobs"][0]) == [i["sid"] for i in r["items"][:2]]
    oa = _openai(client)
    chat = oa.chat.completions.create(model="demo", messages=HEAT, logprobs=True, top_logprobs=2, extra_body={"k": 3})
    entries = chat.choices[0].logprobs.content
    assert [e.token for e in entries] == [i["sid"] for i in chat.model_extra["items"]]
    assert [e.logprob for e in entries] == [i["score"] for i in chat.model_extra["items"]]
    assert all(len(e.top_logprobs) == 2 for e in entries)
    assert oa.chat.completions.create(model="demo", messages=HEAT).choices[0].logprobs is None


def test_json_response_formats_answer_the_items_as_json(client):
    oa = _openai(client)
    r = oa.chat.completions.create(
        model="demo", messages=HEAT, response_format={"type": "json_object"}, extra_body={"k": 3}
    )
    assert json.loads(r.choices[0].message.content) == {"items": r.model_extra["items"]}
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "object", "required": ["item_id", "title"]}}},
        "required": ["items"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "recs", "schema": schema, "strict": True}}
    r = oa.chat.completions.create(model="demo", messages=HEAT, response_format=fmt, extra_body={"k": 3})
    assert len(json.loads(r.choices[0].message.content)["items"]) == 3


def test_max_tokens_pays_for_whole_items(client, trained_demo_run):
    depth = Catalog.load(trained_demo_run / "model").depth
    body = {"model": "demo", "messages": HEAT, "k": 5, "max_tokens": 2 * depth + 1}
    r = client.post("/v1/chat/completions", json=body).json()
    assert len(r["items"]) == 2 and r["choices"][0]["finish_reason"] == "length"
    r = client.post("/v1/chat/completions", json={**body, "max_tokens": 5 * depth}).json()
    assert len(r["items"]) == 5 and r["choices"][0]["finish_reason"] == "stop"


def test_temperature_draws_distinct_valid_items_and_a_seed_repeats_them(client, trained_demo_run):
    catalog = Catalog.load(trained_demo_run / "model")
    ranked = client.post("/v1/completions", json={"model": "demo", "prompt": "I loved Heat", "n": 8}).json()
    body = {"model": "demo", "prompt": "I loved Heat", "n": 8, "temperature": 1.0, "seed": 7}
    first = client.post("/v1/completions", json=body).json()
    again = client.post("/v1/completions", json=body).json()
    ids = [i["item_id"] for i in first["items"]]
    assert len(set(ids)) == 8 and all(catalog.get_index(i) is not None for i in ids)
    assert ids == [i["item_id"] for i in again["items"]]
    scores = [i["score"] for i in first["items"]]
    assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    # a hot draw is not the ranked list; temperature 0 is exactly the ranked list
    hot = client.post("/v1/completions", json={**body, "temperature": 2.0, "seed": 1}).json()
    assert [i["item_id"] for i in hot["items"]] != [i["item_id"] for i in ranked["items"]]
    cold = client.post("/v1/completions", json={**body, "temperature": 0}).json()
    assert cold["items"] == ranked["items"]
    # exclusions and allow-lists hold inside the draw
    allow = [i["item_id"] for i in ranked["items"]][:6]
    filters = {"item_ids": allow, "exclude_item_ids": allow[:2]}
    r = client.post("/v1/completions", json={**body, "n": 4, "filters": filters}).json()
    assert sorted(i["item_id"] for i in r["items"]) == sorted(allow[2:])
    oa = _openai(client)
    chat = oa.chat.completions.create(model="demo", messages=HEAT, temperature=0.8, top_p=0.9, seed=3)
    assert len({i["item_id"] for i in chat.model_extra["items"]}) == 5


def test_models_by_id(client):
    oa = _openai(client)
    assert oa.models.retrieve("demo").id == "demo"
    r = client.get("/v1/models/gpt-4")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_admin_key_rules_the_catalog_routes(trained_demo_run, tmp_path):
    run = copy_run(trained_demo_run, tmp_path / "demo")
    admin = {"Authorization": "Bearer sk-admin"}
    with TestClient(_app(run, admin_key="sk-admin")) as c:
        wait_ready(c)
        r = c.post("/v1/catalog/reload", headers=AUTH)
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        assert c.post("/v1/catalog/reload", headers={"Authorization": "Bearer sk-admin2"}).status_code == 401
        assert c.post("/v1/catalog/reload").status_code == 401
        assert c.post("/v1/catalog/reload", headers=admin).status_code == 200
        # the admin key may do what the API key does; the API key still ranks
        assert c.post("/v1/recommendations", json={"history": ["0468569"]}, headers=admin).status_code == 200
        assert c.post("/v1/recommendations", json={"history": ["0468569"]}, headers=AUTH).status_code == 200


def test_cors_preflight_is_answered_without_a_key(client):
    headers = {
        "Origin": "http://localhost:3000",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
        "Authorization": "",
    }
    r = client.options("/v1/chat/completions", headers=headers)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] in ("*", "http://localhost:3000")
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    # a refused request carries the CORS header too, so a browser app can read the 401
    r = client.get("/v1/models", headers={"Origin": "http://localhost:3000", "Authorization": ""})
    assert r.status_code == 401 and "access-control-allow-origin" in r.headers


def test_openapi_document_describes_answers_errors_and_the_bearer_key(client):
    doc = client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "serve.api_key (or serve.admin_key)",
    }
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"bearer": []}] and "security" not in doc["paths"]["/health"]["get"]
    assert {"200", "400", "401", "413", "503"} <= set(chat["responses"])
    assert chat["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionResponse")
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert "403" in doc["paths"]["/v1/catalog/items"]["post"]["responses"]


@pytest.fixture(scope="module")
def small(trained_demo_run, tmp_path_factory):
    """A server with small request limits."""
    run = copy_run(trained_demo_run, tmp_path_factory.mktemp("small") / "demo")
    limits = dict(
        max_body_bytes=4096, max_text_chars=300, max_history_items=3, max_exclude_items=2, max_prompts=2, max_messages=3
    )
    with TestClient(_app(run, **limits), headers=AUTH) as c:
        wait_ready(c)
        yield c


@pytest.mark.parametrize(
    "path,body,status,needle",
    [
        ("/v1/recommendations", {"text": "I loved Heat " * 400}, 413, "limit of 4,096 bytes"),
        ("/v1/recommendations", {"text": "I loved Heat " * 30}, 400, "serve.max_text_chars"),
        ("/v1/recommendations", {"history": ["0468569"] * 4}, 400, "serve.max_history_items"),
        ("/v1/recommendations", {"history": ["0468569"], "filters": {"item_ids": ["1"] * 3}}, 400, "max_exclude"),
        ("/v1/recommendations", {"history": ["0468569"], "filters": {"exclude_item_ids": ["1"] * 3}}, 400, "max_"),
        ("/v1/completions", {"model": "demo", "prompt": ["I liked Heat"] * 3}, 400, "serve.max_prompts"),
        ("/v1/completions", {"model": "demo", "prompt": "I liked Heat " * 30}, 400, "serve.max_text_chars"),
        ("/v1/chat/completions", {"model": "demo", "messages": [{"role": "user", "content": "hi"}] * 4}, 400, "max_m"),
        ("/v1/chat/completions", {"model": "demo", "messages": [{"role": "user", "content": "a" * 301}]}, 400, "max_t"),
    ],
)
def test_requests_over_the_limits_are_refused(small, path, body, status, needle):
    r = small.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and set(err) == {"message", "type", "param", "code"}
    # at the limits: answered
    r = small.post("/v1/recommendations", json={"history": ["0468569"] * 3, "text": "I loved Heat", "k": 3})
    assert r.status_code == 200, r.text


def test_api_key_is_required(client):
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.AuthenticationError):
        _openai(client, key="wrong").models.list()
    r = client.get("/v1/models", headers={"Authorization": ""})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.json()["error"]["type"] == "authentication_error"
    # /health stays open
    assert client.get("/health", headers={"Authorization": ""}).status_code == 200


class _FailingEngine(HFEngine):
    """An HF engine that says it is ready (no weights needed) and whose ranking raises ``error``."""

    error: Exception = RuntimeError("boom at /secret/path/weights.bin")

    def _started(self) -> bool:
        return True

    async def rank(self, *args, **kwargs):
        raise self.error


def _unstarted(engine, run: Path) -> TestClient:
    # no `with`: the lifespan does not run, so the engine stays unstarted
    return TestClient(create_app(engine, ServerSettings("demo", run)))


def test_an_unstarted_engine_answers_503(trained_demo_run):
    c = _unstarted(HFEngine(trained_demo_run / "model"), trained_demo_run)
    r = c.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "starting"
    r = c.post("/v1/recommendations", json={"history": ["0468569"]})
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    assert "the engine is starting" in r.json()["error"]["message"]


def test_unexpected_errors_answer_500_without_internals_and_are_logged_once(trained_demo_run, caplog):
    c = _unstarted(_FailingEngine(trained_demo_run / "model"), trained_demo_run)
    with caplog.at_level(logging.ERROR):
        r = c.post("/v1/recommendations", json={"history": ["0468569"]})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "secret" not in r.text and "RuntimeError" not in r.text and "boom" not in r.text
    logged = [rec for rec in caplog.records if rec.name == "genrec.serving.app"]
    assert len(logged) == 1 and logged[0].exc_info and "boom" in str(logged[0].exc_info[1])
    # genrec's own errors keep their status and message
    engine = _FailingEngine(trained_demo_run / "model")
    engine.error = InternalError("the trie and the catalog disagree", "re-export the model")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        r = _unstarted(engine, trained_demo_run).post("/v1/recommendations", json={"history": ["0468569"]})
    assert r.status_code == 500 and "trie and the catalog disagree" in r.json()["error"]["message"]
    assert len([rec for rec in caplog.records if rec.name == "genrec.serving.app"]) == 1


def test_a_bare_model_folder_serves_but_refuses_catalog_edits(trained_demo_run, tmp_path):
    model = shutil.copytree(trained_demo_run / "model", tmp_path / "demo")
    with TestClient(_app(model, api_key=None)) as c:
        wait_ready(c)
        assert c.get("/v1/models").json()["data"][0]["id"] == "demo"
        r = c.post("/v1/recommendations", json={"history": ["0468569"], "k": 3})
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        r = c.post("/v1/catalog/remove", json={"item_ids": ["0468569"]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "no_run_folder"


@pytest.fixture()
def edit_client(trained_demo_run, tmp_path):
    """(client, run) over a writable copy of the trained run."""
    run = copy_run(trained_demo_run, tmp_path / "demo")
    with TestClient(_app(run), headers=AUTH) as c:
        wait_ready(c)
        yield c, run


def test_catalog_updates_reach_the_running_server(edit_client):
    client, run = edit_client
    history = {"history": ["0468569"], "k": 5}
    before = client.post("/v1/recommendations", json=history).json()["items"]
    top = before[0]["item_id"]
    # a new item, by text: it gets a semantic ID from the fitted codebooks and can be recommended
    r = client.post(
        "/v1/catalog/items",
        json={"items": [{"item_id": "new-galaxy-heist", "title": "Galaxy Heist (2026)", "genres": "Action|Sci-Fi"}]},
    )
    assert r.status_code == 200, r.text
    added = r.json()
    assert re.fullmatch(r"(<[a-z]_\d+>){4}", added["added"][0]["sid"]) and added["catalog_version"] >= 1
    r = client.post("/v1/recommendations", json={**history, "k": 2, "filters": {"item_ids": ["new-galaxy-heist", top]}})
    assert {i["item_id"] for i in r.json()["items"]} == {"new-galaxy-heist", top}
    # the exported model folder follows, so `genrec recommend` sees it as well
    assert "new-galaxy-heist" in (run / "model" / "catalog.parquet").read_bytes().decode("latin-1")
    # removing the top item: it is never emitted again, even when it is the best match
    r = client.post("/v1/catalog/remove", json={"item_ids": [top, "new-galaxy-heist"]})
    assert r.status_code == 200, r.text
    n_items = r.json()["items"]
    after = client.post("/v1/recommendations", json=history).json()["items"]
    assert top not in [i["item_id"] for i in after] and len(after) == 5
    r = client.post(
        "/v1/completions", json={"model": "demo", "n": 30, "prompt": "History: " + before[1]["sid"] + ". Next item?"}
    )
    assert r.status_code == 200 and top not in [i["item_id"] for i in r.json()["items"]]
    r = client.post("/v1/recommendations", json={**history, "filters": {"item_ids": [top]}})
    assert r.status_code == 400 and "unknown item id" in r.json()["error"]["message"]
    # `genrec items add` on the run, then a reload, without restarting
    (run / "new.jsonl").write_text('{"item_id": "cli-item", "title": "Quiet Harbor (2025)", "genres": "Drama"}\n')
    res = subprocess.run(
        [sys.executable, "-m", "genrec.cli", "items", "add", str(run), str(run / "new.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    r = client.post("/v1/catalog/reload", json={})
    assert r.status_code == 200 and r.json()["items"] == n_items + 1
    r = client.post("/v1/recommendations", json={**history, "k": 1, "filters": {"item_ids": ["cli-item"]}})
    assert [i["item_id"] for i in r.json()["items"]] == ["cli-item"]


def _leftovers(run: Path) -> list[str]:
    """Temporary files and folders of catalog edits (the lock file stays by design)."""
    return [p.name for f in ("model", "tokenize") for p in (run / f).iterdir() if p.name.startswith(".")]


def test_catalog_edit_errors(edit_client):
    client, run = edit_client
    before = client.get("/health").json()
    all_ids = Catalog.load(run / "model").item_ids
    item = {"item_id": "new-1", "title": "New One (2026)", "genres": "Drama"}
    for path, body, needle in [
        ("/v1/catalog/items", {"items": []}, "items is empty"),
        ("/v1/catalog/items", {"items": [{"title": "No Id (2020)"}]}, "item_id: Field required"),
        ("/v1/catalog/items", {"items": [{**item, "item_id": None}]}, "item_id must be a string or an integer"),
        ("/v1/catalog/items", {"items": [{**item, "item_id": {"a": 1}}]}, "item_id must be a string or an integer"),
        ("/v1/catalog/items", {"items": [{**item, "item_id": True}]}, "item_id must be a string or an integer"),
        ("/v1/catalog/items", {"items": [{**item, "item_id": "x\x001"}]}, "control characters"),
        ("/v1/catalog/items", {"items": [{**item, "item_id": "[id: 1]"}]}, "brackets"),
        ("/v1/catalog/items", {"items": [{**item, "item_id": "x" * 257}]}, "1 to 256 characters"),
        ("/v1/catalog/items", {"items": [{**item, "title": "Two\nLines"}]}, "title must be one line"),
        ("/v1/catalog/items", {"items": [{**item, "genres": ["Drama"]}]}, "'genres' must be a string or a number"),
        ("/v1/catalog/items", {"items": [{**item, "genres": "a\x07b"}]}, "control characters"),
        ("/v1/catalog/items", {"items": [item, {**item, "title": "Other (2026)"}]}, "'new-1' is given twice"),
        ("/v1/catalog/items", {"items": [{"item_id": "new-1"}]}, "'new-1' has no text"),
        ("/v1/catalog/items", {"items": [{"item_id": "new-1", "title": " ", "genres": None}]}, "has no text"),
        ("/v1/catalog/items", {"items": [{**item, "item_id": "0468569"}]}, "already in the catalog"),
        ("/v1/catalog/remove", {"item_ids": []}, "item_ids is empty"),
        ("/v1/catalog/remove", {"item_ids": [None]}, "item_ids.0"),
        ("/v1/catalog/remove", {"item_ids": ["no-such-item"]}, "not in the catalog"),
        ("/v1/catalog/remove", {"item_ids": all_ids}, "would leave the catalog empty"),
    ]:
        r = client.post(path, json=body)
        assert r.status_code == 400 and needle in r.json()["error"]["message"], (body, r.text)
    # nothing changed, nothing left behind
    assert client.get("/health").json() == before and Catalog.load(run / "model").item_ids == all_ids
    assert set(_leftovers(run)) <= {".catalog.lock"}
