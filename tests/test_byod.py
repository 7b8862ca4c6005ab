"""Bring your own data: docs/bring-your-own-data.md run as written, on the CSV files it generates.

The page's Python block writes interactions.csv and items.csv, its YAML block is the config, and
its six `genrec` commands run as subprocesses (training shortened to a few steps): prepare,
tokenize, train, evaluate, recommend and serve, the last as a real server on a free port that
answers one /v1/recommendations request before it is stopped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO
from genrec.data import PreparedDataset

DOC = REPO / "docs" / "bring-your-own-data.md"
TRAIN_STEPS = 40  # the page trains 600 steps (a minute); a few show that the pipeline runs


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def _six_commands(text: str) -> list[list[str]]:
    block = next(b for b in _blocks(text, "bash") if "genrec data prepare" in b)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("genrec ")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(folder: Path, args: list[str], env: dict[str, str]) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "genrec.cli", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, f"genrec {' '.join(args)} failed:\n{res.stderr[-3000:]}"
    return res.stdout


def test_the_page_has_six_commands_and_one_config():
    text = DOC.read_text(encoding="utf-8")
    commands = _six_commands(text)
    assert [c[1] for c in commands] == ["data", "tokenize", "train", "evaluate", "recommend", "serve"]
    assert len(_blocks(text, "python")) == 1 and len(_blocks(text, "yaml")) == 2
    assert _blocks(text, "yaml")[0].startswith("# shop.yaml\n")


@pytest.mark.slow
def test_six_commands_from_csv_to_server(tmp_path, monkeypatch):
    text = DOC.read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    exec(compile(_blocks(text, "python")[0], str(DOC), "exec"), {"__name__": "__byod__"})
    config = _blocks(text, "yaml")[0]
    (tmp_path / "shop.yaml").write_text(config, encoding="utf-8")
    prepare, tokenize, train, evaluate, recommend, serve = (c[1:] for c in _six_commands(text))
    # one thread per process: the machine running the tests may have two cores for several jobs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = tmp_path / "runs" / "shop"

    out = _run(tmp_path, prepare, env)
    assert "prepared 400 users, 100 items" in out, out
    assert "unique semantic IDs of depth 3" in _run(tmp_path, tokenize, env)
    out = _run(tmp_path, [*train, "-s", f"train.max_steps={TRAIN_STEPS}", "-s", "train.num_threads=1"], env)
    assert f"trained {TRAIN_STEPS} steps" in out and (run / "model" / "genrec.json").is_file(), out

    out = _run(tmp_path, evaluate, env)
    result = json.loads((run / "eval" / "test.json").read_text())
    assert result["users"] == 200 and result["genrec"]["invalid_rate"] == 0 and "popularity" in result, out

    # `genrec recommend` leaves out seen items unless asked, and says which it did
    out = _run(tmp_path, recommend, env)
    assert "excluded (--include-seen keeps them)" in out, out
    rows = [json.loads(line) for line in (run / "recommendations_test.jsonl").read_text().splitlines()]
    history = {u: h for u, h, _ in PreparedDataset.load(run / "data").split("test")}
    assert [r["user_id"] for r in rows] == list(history)
    for r in rows:
        ids = [i["item_id"] for i in r["items"]]
        assert len(ids) == 5 and not set(ids) & set(history[r["user_id"]]), r

    # the server: a real process on a free port, ready when /health answers 200
    port = _free_port()
    args = [*serve[: serve.index("--port")], "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "genrec.cli", *args], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "genrec serve was not ready in 180 s"
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        user_history = history["u0"][-3:]
        r = httpx.post(f"{url}/v1/recommendations", json={"history": user_history, "k": 3}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["used_history"] == user_history and len(body["items"]) == 3
        assert all(i["item_id"].startswith("p") and i["title"] for i in body["items"])
        assert not {i["item_id"] for i in body["items"]} & set(user_history)  # the route excludes seen items too
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
