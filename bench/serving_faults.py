"""Load + faults against a real `genrec serve` process: does anything hang, 5xx or lose data?

    python bench/serving_faults.py RUN [--backend hf|vllm] [--clients 16]

While ``--clients`` threads post valid `/v1/recommendations` requests the whole time:

1. abusive requests: a 5 MB body, a 200 KB chat message of titles, broken and deeply nested
   JSON; each must be a 4xx, and `/health` must keep answering meanwhile;
2. concurrent catalog edits (4 adds and a remove at once): every answer 200, and the final
   catalog on disk equals the edits;
3. the end: with ``--backend vllm`` the engine-core process is killed (the server must answer
   503 and exit with status 3); with ``hf`` the server gets SIGTERM (it must exit 0).

Counts of valid requests, their 5xx answers and hangs (no answer in 120 s), the slowest
`/health`, and the checks' outcomes are printed and written to bench/results/serving.json.
RUN is copied first: the edits never touch it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import _bodies, _record, _save, _start  # noqa: E402

from genrec.tokenization.catalog import Catalog  # noqa: E402

HANG_S = 120


class Load:
    """Valid requests from ``clients`` threads until stopped; counts answers by status."""

    def __init__(self, base: str, bodies: list[dict], clients: int):
        self.base, self.bodies, self.stop = base, bodies, threading.Event()
        self.counts: dict[str, int] = {"ok": 0, "4xx": 0, "5xx": 0, "503": 0, "hang": 0, "refused": 0}
        self.lock = threading.Lock()
        self.phase = "start"  # what the run is doing now, to say when a 5xx came
        self.phase_of_5xx: list[tuple[str, int]] = []
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=HANG_S) as c:
            n = i
            while not self.stop.is_set():
                body = self.bodies[n % len(self.bodies)]
                n += len(self.threads)
                try:
                    status = c.post(self.base + "/v1/recommendations", json=body).status_code
                    kind = "ok" if status == 200 else "503" if status == 503 else f"{status // 100}xx"
                    if status >= 500 and status != 503:
                        self.phase_of_5xx.append((self.phase, status))
                except httpx.TimeoutException:
                    kind = "hang"
                except httpx.TransportError:
                    kind = "refused"  # the server has exited (the end of phase 3)
                    time.sleep(0.2)
                with self.lock:
                    self.counts[kind] = self.counts.get(kind, 0) + 1

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def _health_latency(base: str, seconds: float) -> float:
    """The slowest of /health answers polled for ``seconds`` (inf if one timed out)."""
    worst, end = 0.0, time.time() + seconds
    while time.time() < end:
        t = time.perf_counter()
        try:
            httpx.get(base + "/health", timeout=10)
        except httpx.TimeoutException:
            return float("inf")
        worst = max(worst, time.perf_counter() - t)
        time.sleep(0.1)
    return round(worst, 3)


def abuse(base: str) -> dict:
    """Abusive requests sent together while /health is polled: their statuses and the slowest health."""
    model = httpx.get(base + "/v1/models", timeout=30).json()["data"][0]["id"]
    chat = {"model": model, "messages": [{"role": "user", "content": "I loved Inception " * 11377}]}
    bad = {
        "5MB body": ("/v1/recommendations", b'{"text": "' + b"a" * 5_000_000 + b'"}'),
        "200KB message": ("/v1/chat/completions", json.dumps(chat).encode()),
        "broken JSON": ("/v1/completions", b'{"model": '),
        "deep nesting": ("/v1/completions", b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    }

    def send(path: str, content: bytes) -> int:
        try:
            return httpx.post(base + path, content=content, timeout=HANG_S).status_code
        except httpx.TimeoutException:
            return -1

    with ThreadPoolExecutor(len(bad) + 1) as pool:
        health = pool.submit(_health_latency, base, 5)
        statuses = {name: pool.submit(send, *req) for name, req in bad.items()}
        out = {name: f.result() for name, f in statuses.items()}
        out["slowest_health_s"] = health.result()
    out["all_4xx"] = all(400 <= s < 500 for k, s in out.items() if k != "slowest_health_s")
    return out


def edits(base: str, run: Path, keep: set[str]) -> dict:
    """Four adds and one remove at once; every answer must be 200 and the catalog must hold them all."""
    before = Catalog.load(run / "model").item_ids
    removed = [i for i in before if i not in keep][:2]
    new_ids = [f"bench-new-{i}" for i in range(4)]
    calls = [("/v1/catalog/items", {"items": [{"item_id": i, "title": f"{i} (2026)"}]}) for i in new_ids]
    calls.append(("/v1/catalog/remove", {"item_ids": removed}))
    with ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(lambda c: httpx.post(base + c[0], json=c[1], timeout=600), calls))
    final = Catalog.load(run / "model").item_ids
    return {
        "answers": [a.status_code for a in answers],
        "catalog_correct": sorted(final) == sorted(set(before) - set(removed) | set(new_ids)),
    }


def end(proc, base: str, backend: str) -> dict:
    """Kill vLLM's engine core (expect 503, then exit 3) or SIGTERM the HF server (expect exit 0)."""
    import psutil

    t = time.time()
    if backend == "vllm":
        cores = [p for p in psutil.Process(proc.pid).children(recursive=True) if "EngineCore" in " ".join(p.cmdline())]
        for p in cores:
            p.kill()
        try:
            body = {"text": "I loved Inception"}
            after = httpx.post(base + "/v1/recommendations", json=body, timeout=30).status_code
        except httpx.TransportError:
            after = "exited"
    else:
        proc.send_signal(signal.SIGTERM)
        after = None
    status = proc.wait(timeout=120)
    return {"answer_after_fault": after, "exit_status": status, "seconds_to_exit": round(time.time() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / args.run.name
        shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("train", "serve"))
        bodies = _bodies(run, 64, 10, 10)
        keep = {i for b in bodies for i in b["history"]}
        log = Path(tmp) / "server.log"
        proc, base, _ = _start(run, args.backend, log)
        out: dict = {"run": str(args.run), "backend": args.backend, "clients": args.clients, **_record()}
        try:
            with Load(base, bodies, args.clients) as load:
                load.phase = "abuse"
                out["abuse"] = abuse(base)
                load.phase = "edits"
                out["edits"] = edits(base, run, keep)
                load.phase = "steady"
                out["slowest_health_under_load_s"] = _health_latency(base, 5)
                load.phase = "end"
                out["end"] = end(proc, base, args.backend)
            out["valid_requests"] = load.counts
            out["5xx_by_phase"] = {p: [s for q, s in load.phase_of_5xx if q == p] for p, _ in load.phase_of_5xx}
        finally:
            if proc.poll() is None:
                proc.kill()
        # what the server logged as errors (a 5xx is logged once, with its cause)
        errors = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("ERROR")]
        out["server_errors"] = sorted(set(errors))[:10]
        shutil.copy(log, Path(tempfile.gettempdir()) / f"genrec-faults-{args.backend}.log")
    print(json.dumps(out, indent=2))
    _save(f"faults:{args.backend}:{args.run.resolve().name}", out)


if __name__ == "__main__":
    main()
