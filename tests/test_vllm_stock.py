"""Stock vLLM: its own OpenAI server, started with `genrec vllm-command`'s flags, decodes items through
genrec's logits processor (the installed entry point) when a request carries `vllm_xargs`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genrec.config import EngineConfig
from genrec.exported import ExportedModel

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (front end, EngineCore, workers), SIGKILL what is left."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if _group_alive(proc.pid):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
            time.sleep(0.2)
        if not _group_alive(proc.pid):
            break
    proc.wait(timeout=5)


@pytest.fixture(scope="module")
def stock_server(trained_demo_run, tmp_path_factory):
    """vLLM's own OpenAI server on RUN/model (base URL), with the engine flags genrec uses."""
    import httpx

    from genrec.decoding.vllm_backend import server_command

    port = _free_port()
    env_add, argv = server_command(
        EngineConfig(), trained_demo_run / "model", port=port, served_model_name="demo", python=sys.executable
    )
    env = {**os.environ, **env_add, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))
    log_path = tmp_path_factory.mktemp("stock_vllm") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy after {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield base
    finally:
        _stop(proc)
    assert not _group_alive(proc.pid), "vLLM engine processes outlived the server"


@pytest.mark.slow
def test_stock_vllm_server_decodes_items_with_vllm_xargs(stock_server, trained_demo_run):
    exported = ExportedModel.load(trained_demo_run / "model", with_model=False)
    catalog = exported.catalog
    prompt = exported.formatter.next_item_prompt([0, 5, 9])  # token ids: the completions API takes them as is
    client = openai.OpenAI(base_url=f"{stock_server}/v1", api_key="unused", max_retries=0, timeout=120)

    def complete(genrec: dict | None, **kw):
        body = {"vllm_xargs": {"genrec": json.dumps(genrec)}} if genrec is not None else {}
        return client.completions.create(model="demo", prompt=prompt, max_tokens=8, extra_body=body, **kw).choices

    def item(choice) -> int | None:
        """The catalog row a whole answer spells (None for anything else)."""
        return catalog.index_of_sid(choice.text) if choice.finish_reason == "stop" else None

    # greedy: a catalog item, then end of sequence
    greedy = item(complete({}, temperature=0.0)[0])
    assert greedy is not None
    # the empty string is the trivial form ("switch it on, no arguments")
    assert client.completions.create(
        model="demo", prompt=prompt, max_tokens=8, temperature=0.0, extra_body={"vllm_xargs": {"genrec": ""}}
    ).choices[0].text == catalog.sid(greedy)

    # sampling: n different draws, every one a catalog item
    sampled = [item(c) for c in complete({}, temperature=1.0, n=8, seed=1)]
    assert None not in sampled and len(set(sampled)) > 1, sampled

    # exclusions hold inside decoding: the greedy item is gone, another valid one comes instead
    other = item(complete({"exclude": [greedy]}, temperature=0.0)[0])
    assert other is not None and other != greedy
    # rows beyond the catalog are ignored (and must not take the engine down)
    assert item(complete({"exclude": [greedy, 10**9]}, temperature=0.0)[0]) == other

    # an allow-list: only those items, even when sampling
    allow = [3, len(catalog) // 2, len(catalog) - 1]
    assert {item(c) for c in complete({"allow": allow}, temperature=1.0, n=8, seed=2)} <= set(allow)
    only = complete({"allow": allow[1:2]}, temperature=0.0, logprobs=1)[0]
    assert item(only) == allow[1] and all(lp == 0.0 for lp in only.logprobs.token_logprobs)

    # without vllm_xargs the processor is inert: the model's own distribution (some of its mass lies
    # on tokens off the trie, which the processor would take away and renormalise)
    masked = complete({}, temperature=0.0, logprobs=1)[0]
    free = complete(None, temperature=0.0, logprobs=20)[0]
    first = masked.logprobs.tokens[0]
    assert free.logprobs.top_logprobs[0][first] < masked.logprobs.token_logprobs[0] - 1e-6
    # a text prompt: free text without the arguments, an item with them
    story = client.completions.create(model="demo", prompt="Once upon a time", max_tokens=8, temperature=0.0)
    assert story.choices[0].finish_reason in ("stop", "length")
    story = client.completions.create(
        model="demo",
        prompt="Once upon a time",
        max_tokens=8,
        temperature=0.0,
        extra_body={"vllm_xargs": {"genrec": "{}"}},
    )
    assert item(story.choices[0]) is not None

    # bad genrec arguments are a 400 with genrec's message, and the server keeps serving
    for bad, words in (
        ("{bad", "JSON object"),
        ("[1]", "must be an object"),
        ('{"mode": "beam"}', "mode"),
        ('{"ecxlude": [1]}', "unknown"),
        ('{"exclude": [-1]}', "row numbers"),
    ):
        with pytest.raises(openai.BadRequestError, match=words):
            client.completions.create(
                model="demo", prompt=prompt, max_tokens=8, extra_body={"vllm_xargs": {"genrec": bad}}
            )
    with pytest.raises(openai.BadRequestError, match="trie"):
        complete({"trie": "/no/such/folder"})
    assert item(complete({}, temperature=0.0)[0]) == greedy


def test_genrec_xargs_come_as_a_dict_or_a_json_string():
    """vLLM's HTTP `vllm_xargs` holds no nested objects, so the arguments may come as a JSON string."""
    from types import SimpleNamespace

    from genrec.decoding.vllm_processor import TrieLogitsProcessor, request_xargs

    assert request_xargs(None) is None and request_xargs({"kv_transfer_params": {}}) is None
    assert request_xargs({"genrec": ""}) == request_xargs({"genrec": "{}"}) == {}
    assert request_xargs({"genrec": '{"exclude": [3, 7], "mode": "mask"}'}) == {"exclude": [3, 7], "mode": "mask"}
    assert request_xargs({"genrec": {"allow": [1], "prefix_len": 2}}) == {"allow": [1], "prefix_len": 2}
    for bad in ("{bad", "[1]", "3", '{"exclude": [true]}', '{"allow": [-1]}', '{"prefix_len": -1}', '{"trie": 3}'):
        with pytest.raises(ValueError):
            request_xargs({"genrec": bad})
    # a trie folder that is not there is refused at admission, before the engine process sees it
    with pytest.raises(ValueError, match="trie.npz"):
        TrieLogitsProcessor.validate_params(SimpleNamespace(extra_args={"genrec": '{"trie": "/no/such"}'}))
    TrieLogitsProcessor.validate_params(SimpleNamespace(extra_args=None))


def test_server_command_carries_genrec_engine_flags(tmp_path, monkeypatch):
    from genrec.decoding.vllm_backend import processor_entry_point_installed, server_command

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 512}')
    env, argv = server_command(EngineConfig(), tmp_path, port=9001, served_model_name="demo", python="py")
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "3"}
    assert argv[:5] == ["py", "-m", "vllm.entrypoints.openai.api_server", "--model", str(tmp_path)]
    line = " ".join(argv)
    for flag in (
        "--dtype float32",
        "--enforce-eager",
        "--block-size 32",
        "--enable-prefix-caching",
        "--max-model-len 512",
        "--logprobs-mode processed_logprobs",
        "--max-logprobs 51",
        "--served-model-name demo",
        "--host 127.0.0.1 --port 9001",
    ):
        assert flag in line
    # the entry point loads the processor; naming it too would mask every request twice
    assert ("--logits-processors" in argv) != processor_entry_point_installed()
