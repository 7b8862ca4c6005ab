"""vLLM serving benchmark: offline throughput vs the HF backend, endpoint latency, start time, memory.

    python bench/serving.py offline  RUN [--users 32 --num-beams 10]
    python bench/serving.py endpoint RUN [--requests 40 --clients 1 16]

``offline``: the same users, model, beams and dtype (fp32) through the HF backend
(`Recommender`, prefill once + KV cache per beam) and the vLLM backend (`VllmRecommender`,
one single-token request per beam per step), as users/s and their ratio, plus vLLM with
the CPU's default 128-token KV block (prefix caching cannot reuse a prompt shorter than a
block) to show what the 32-token block buys. Also checks both backends return the same items.

``endpoint``: starts `genrec serve RUN` as a real process, records start time and resident
memory (server + engine processes), then a bounded load generator on 127.0.0.1 sends
``--requests`` `/v1/recommendations` calls from 1 and from 16 concurrent clients and reports
p50/p99 latency and requests/s.

Results print as markdown rows and are written to bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"


def _save(key: str, value: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[key] = value
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def offline(run: Path, users: int, num_beams: int, batch_size: int) -> None:
    from genrec.data import PreparedDataset
    from genrec.data import split_rows
    from genrec.decoding.hf import GenerativeRecommender
    from genrec.config import EngineConfig
    from genrec.decoding.vllm_backend import VllmRecommender

    _, histories, _ = split_rows(PreparedDataset.load(run / "data"), "test", max_users=users, seed=0)
    out: dict = {"users": len(histories), "num_beams": num_beams, "k": 10, "dtype": "float32", "batch_size": batch_size}

    hf = GenerativeRecommender.from_folder(run / "model")
    hf.recommend(histories[:2], k=10, num_beams=num_beams)  # warm-up
    t = time.perf_counter()
    ref = hf.recommend(histories, k=10, num_beams=num_beams, batch_size=batch_size, exclude=histories)
    out["hf_users_per_s"] = len(histories) / (time.perf_counter() - t)
    del hf

    for name, block in (("vllm", 32), ("vllm_block128", 128)):
        t0 = time.perf_counter()
        rec = VllmRecommender(run / "model", EngineConfig(block_size=block))
        out[f"{name}_start_s"] = time.perf_counter() - t0
        rec.recommend(histories[:2], k=10, num_beams=num_beams)  # warm-up
        t = time.perf_counter()
        got = rec.recommend(histories, k=10, num_beams=num_beams, batch_size=batch_size, exclude=histories)
        out[f"{name}_users_per_s"] = len(histories) / (time.perf_counter() - t)
        out[f"{name}_same_top10_as_hf"] = sum(
            [r.item_id for r in a] == [r.item_id for r in b] for a, b in zip(got, ref)
        )
        rec.close()
        del rec
    out["vllm_over_hf"] = out["vllm_users_per_s"] / out["hf_users_per_s"]
    out["block32_over_block128"] = out["vllm_users_per_s"] / out["vllm_block128_users_per_s"]
    print(json.dumps(out, indent=2))
    _save("offline", out)


def _rss_tree_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, MiB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for t in Path(f"/proc/{p}/task").iterdir():
                children = (t / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 1024


def endpoint(run: Path, requests: int, clients: list[int], k: int) -> None:
    import httpx

    from genrec.data import PreparedDataset
    from genrec.data import split_rows

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "genrec.cli", "serve", str(run), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit("server exited at start")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:  # 503 while starting
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        out: dict = {
            "start_s": time.perf_counter() - t0,
            "rss_after_start_mib": _rss_tree_mib(proc.pid),
            "k": k,
            "requests": requests,
        }
        user_ids, histories, _ = split_rows(PreparedDataset.load(run / "data"), "test", max_users=requests, seed=1)
        ds = PreparedDataset.load(run / "data")
        ids = ds.items["item_id"].tolist()
        bodies = [{"history": [ids[i] for i in h], "k": k} for h in histories]
        httpx.post(base + "/v1/recommendations", json=bodies[0], timeout=300)  # warm-up
        for n_clients in clients:
            latencies: list[float] = []
            lock = threading.Lock()
            queue = list(bodies)

            def worker():
                with httpx.Client(timeout=600) as c:
                    while True:
                        with lock:
                            if not queue:
                                return
                            body = queue.pop()
                        t = time.perf_counter()
                        r = c.post(base + "/v1/recommendations", json=body)
                        r.raise_for_status()
                        with lock:
                            latencies.append(time.perf_counter() - t)

            t = time.perf_counter()
            threads = [threading.Thread(target=worker) for _ in range(n_clients)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t
            lat = sorted(latencies)
            out[f"clients_{n_clients}"] = {
                "p50_s": statistics.median(lat),
                "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                "requests_per_s": len(lat) / wall,
            }
        out["rss_after_load_mib"] = _rss_tree_mib(proc.pid)
        print(json.dumps(out, indent=2))
        _save("endpoint", out)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("offline")
    a.add_argument("run", type=Path)
    a.add_argument("--users", type=int, default=32)
    a.add_argument("--num-beams", type=int, default=10)
    a.add_argument("--batch-size", type=int, default=16)
    b = sub.add_parser("endpoint")
    b.add_argument("run", type=Path)
    b.add_argument("--requests", type=int, default=40)
    b.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    b.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(".cache/vllm").resolve()))
    if args.what == "offline":
        offline(args.run, args.users, args.num_beams, args.batch_size)
    else:
        endpoint(args.run, args.requests, args.clients, args.k)


if __name__ == "__main__":
    main()
