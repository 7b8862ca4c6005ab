"""vLLM serving benchmark: offline throughput vs the HF backend, endpoint latency, start time, memory.

    python bench/serving.py offline  RUN [--users 32 --num-beams 10]
    python bench/serving.py endpoint RUN [--requests 64 --clients 1 16 --backends vllm hf]
    python bench/serving.py soak     RUN [--minutes 10 --clients 16 --backend hf]
    python bench/serving.py docs     # docs/benchmarks.md's serving section, from the results file

``offline``: the same users, model, beams and dtype (fp32) through the HF backend
(`Recommender`, prefill once + KV cache per beam) and the vLLM backend (`VllmRecommender`,
one single-token request per beam per step), as users/s and their ratio, plus vLLM with
the CPU's default 128-token KV block (prefix caching cannot reuse a prompt shorter than a
block) to show what the 32-token block buys. Also checks both backends return the same items.

``endpoint``: for each backend, starts `genrec serve RUN --backend B` as a real process,
records start time and resident memory (server + engine processes), then a bounded load
generator on 127.0.0.1 sends ``--requests`` `/v1/recommendations` calls from 1 and from 16
concurrent clients and reports p50/p99 latency and requests/s. Beside them, the compute
floor: the same searches one at a time in this process (the HF recommender, prefill once +
KV cache per beam, fp32), median seconds per request.

``soak``: 16 clients for ``--minutes`` against one server, resident memory sampled every 30 s
(does it level off?).

Results are written to bench/results/serving.json with the command, CPU and commit.
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(run: Path, backend: str, log: Path | None = None) -> tuple[subprocess.Popen, str, float]:
    """`genrec serve` as a real process (its output to ``log``, if given); (process, base URL,
    seconds until /health said ready)."""
    import httpx

    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "genrec.cli", "serve", str(run), "--port", str(port), "--backend", backend],
        stdout=open(log, "w") if log else subprocess.DEVNULL,  # noqa: SIM115 - the child holds it
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the {backend} server exited at start")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:  # 503 while starting
                return proc, base, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def _bodies(run: Path, requests: int, k: int, num_beams: int) -> list[dict]:
    from genrec.data import PreparedDataset, split_rows

    ds = PreparedDataset.load(run / "data")
    _, histories, _ = split_rows(ds, "test", max_users=requests, seed=1)
    ids = ds.items["item_id"].tolist()
    return [{"history": [ids[i] for i in h], "k": k, "num_beams": num_beams} for h in histories]


def _load(base: str, bodies: list[dict], n_clients: int, until: float | None = None) -> dict:
    """``n_clients`` threads posting ``bodies`` (once each, or round after round until ``until``)."""
    import httpx

    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    queue = list(bodies)

    def worker() -> None:
        nonlocal failures
        with httpx.Client(timeout=600) as c:
            while True:
                with lock:
                    if not queue:
                        if until is None or time.time() > until:
                            return
                        queue.extend(bodies)
                    body = queue.pop()
                t = time.perf_counter()
                r = c.post(base + "/v1/recommendations", json=body)
                with lock:
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t)
                    else:
                        failures += 1

    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(n_clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    lat = sorted(latencies)
    return {
        "p50_s": round(statistics.median(lat), 4),
        "p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 4),
        "requests_per_s": round(len(lat) / wall, 3),
        "requests": len(lat),
        "failures": failures,
    }


def compute_floor(run: Path, bodies: list[dict]) -> float:
    """Median seconds of one search alone, in process: the model's work for one request."""
    import torch

    from genrec.decoding.hf import GenerativeRecommender

    hf = GenerativeRecommender.from_folder(run / "model")
    rows = [[hf.catalog.get_index(i) for i in b["history"]] for b in bodies]
    hf.recommend(rows[:1], k=bodies[0]["k"], num_beams=bodies[0]["num_beams"], exclude=rows[:1])  # warm-up
    times = []
    with torch.inference_mode():
        for h, b in zip(rows, bodies):
            t = time.perf_counter()
            hf.recommend([h], k=b["k"], num_beams=b["num_beams"], exclude=[h])
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _cpu() -> str:
    """The CPU model, its bf16 support and core count, as lscpu names them.

    Machines that lscpu names alike ("AMD EPYC", family 25) differ in whether they run bf16
    natively, which decides genrec's precision and its speed, so the row says which it was.
    """
    info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    name = fields.get("Model name", "?").strip()
    flags = set(fields.get("Flags", "").split())
    bf16 = "AMX bf16" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "no native bf16"
    family, model = fields.get("CPU family", "?").strip(), fields.get("Model", "?").strip()
    return f"{name} (family {family} model {model}, {bf16}), {fields.get('CPU(s)', '?').strip()} cores"


def _record() -> dict:
    from genrec.runs import git_commit

    return {"command": "python " + " ".join(sys.argv), "cpu": _cpu(), "commit": git_commit()}


def endpoint(run: Path, requests: int, clients: list[int], k: int, num_beams: int, backends: list[str]) -> None:
    bodies = _bodies(run, requests, k, num_beams)
    out: dict = {"run": str(run), "k": k, "num_beams": num_beams, "requests": len(bodies), **_record()}
    out["compute_floor_s"] = round(compute_floor(run, bodies[: min(16, len(bodies))]), 4)
    for backend in backends:
        proc, base, start_s = _start(run, backend)
        try:
            row: dict = {"start_s": round(start_s, 1), "rss_after_start_mib": round(_rss_tree_mib(proc.pid))}
            _load(base, bodies[:2], 1)  # warm-up
            for n_clients in clients:
                row[f"clients_{n_clients}"] = _load(base, bodies, n_clients)
            row["rss_after_load_mib"] = round(_rss_tree_mib(proc.pid))
            out[backend] = row
        finally:
            proc.terminate()
            proc.wait(timeout=120)
        print(json.dumps({backend: row}, indent=2), flush=True)
    if len(backends) > 1:
        first, last = backends[0], backends[-1]
        for n in clients:
            out[f"{last}_over_{first}_throughput_clients_{n}"] = round(
                out[last][f"clients_{n}"]["requests_per_s"] / out[first][f"clients_{n}"]["requests_per_s"], 2
            )
    for backend in backends:
        out[f"{backend}_p50_1_client_over_floor"] = round(
            out[backend]["clients_1"]["p50_s"] / out["compute_floor_s"], 2
        )
    print(json.dumps(out, indent=2))
    _save(f"endpoint:{run.resolve().name}", out)


def soak(run: Path, minutes: float, clients: int, k: int, num_beams: int, backend: str) -> None:
    bodies = _bodies(run, 64, k, num_beams)
    proc, base, _ = _start(run, backend)
    samples: list[tuple[float, float]] = []
    try:
        t0 = time.time()
        until = t0 + 60 * minutes
        results: dict = {}
        load = threading.Thread(target=lambda: results.update(_load(base, bodies, clients, until)))
        load.start()
        while load.is_alive():
            samples.append((round((time.time() - t0) / 60, 2), round(_rss_tree_mib(proc.pid))))
            load.join(timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    out = {"run": str(run), "backend": backend, "minutes": minutes, "clients": clients, **results, **_record()}
    out["rss_mib_by_minute"] = samples
    print(json.dumps(out, indent=2))
    _save(f"soak:{backend}:{run.resolve().name}", out)


DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- serving:begin (bench/serving.py docs) -->", "<!-- serving:end -->"


def _commit(row: dict) -> str:
    """The short commit, ``-dirty`` kept, and the row's note on it."""
    commit = row["commit"] or "?"
    short = commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")
    return short + (f" ({row['note']})" if row.get("note") else "")


def _endpoint_table(key: str, row: dict) -> list[str]:
    backends = [b for b in ("vllm", "hf") if b in row]
    lines = [
        f"`{row['command']}` ({row['cpu']}, commit {_commit(row)}; model `{key.split(':', 1)[1]}`, "
        f"k={row['k']}, beam {row['num_beams']}, {row['requests']} test users' histories):",
        "",
        "| backend | start | clients | p50 | p99 | requests/s | 5xx | memory after load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in backends:
        for n in (1, 16):
            c = row[b].get(f"clients_{n}")
            if c:
                lines.append(
                    f"| {b} | {row[b]['start_s']} s | {n} | {c['p50_s']:.3f} s | {c['p99_s']:.3f} s | "
                    f"{c['requests_per_s']:.2f} | {c['failures']} | {row[b]['rss_after_load_mib'] / 1024:.1f} GiB |"
                )
    lines += ["", f"Compute floor (one search alone, in process): {row['compute_floor_s']:.3f} s."]
    for b in backends:
        lines.append(f"p50 at one client / floor, {b}: **{row[f'{b}_p50_1_client_over_floor']}x**.")
    if len(backends) > 1:
        lines.append(
            f"Throughput hf / vllm: **{row['hf_over_vllm_throughput_clients_1']}x** at 1 client, "
            f"**{row['hf_over_vllm_throughput_clients_16']}x** at 16."
        )
    return lines + [""]


def docs() -> None:
    """Write the serving section of docs/benchmarks.md from bench/results/serving.json."""
    data = json.loads(RESULTS.read_text())
    lines = [BEGIN, ""]
    for key, row in data.items():
        if key.startswith("endpoint:"):
            lines += _endpoint_table(key, row)
    for key, row in data.items():
        if key.startswith("soak:"):
            curve = ", ".join(f"{m:g} min {mib / 1024:.2f} GiB" for m, mib in row["rss_mib_by_minute"] if m % 2 == 0)
            lines += [
                f"`{row['command']}` ({row['cpu']}, commit {_commit(row)}): {row['clients']} clients for "
                f"{row['minutes']:g} min, {row['requests']} requests at {row['requests_per_s']:.1f}/s, "
                f"{row['failures']} failures; resident memory (server + engine): {curve}.",
                "",
            ]
    for key, row in data.items():
        if key.startswith("faults:"):
            v, e, a = row["valid_requests"], row["end"], row["abuse"]
            fault = "engine core killed" if row["backend"] == "vllm" else "SIGTERM"
            lines += [
                f"`{row['command']}` ({row['cpu']}, commit {_commit(row)}): under {row['clients']} clients "
                f"of valid requests ({v['ok']} answered 200, {v['5xx']} 5xx, {v['hang']} hangs, {v['503']} 503 "
                f"after the fault), abusive requests all 4xx: {a['all_4xx']} (slowest /health meanwhile "
                f"{a['slowest_health_s']} s); concurrent catalog edits {row['edits']['answers']}, catalog "
                f"correct: {row['edits']['catalog_correct']}; end ({fault}): "
                f"answer {e['answer_after_fault']}, exit status {e['exit_status']} after {e['seconds_to_exit']} s.",
                "",
            ]
    lines.append(END)
    text = DOCS.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    DOCS.write_text(text[:start] + "\n".join(lines) + text[stop:])


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
    b.add_argument("--requests", type=int, default=64)
    b.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    b.add_argument("--backends", nargs="+", default=["vllm", "hf"])
    b.add_argument("-k", type=int, default=10)
    b.add_argument("--num-beams", type=int, default=10)
    c = sub.add_parser("soak")
    c.add_argument("run", type=Path)
    c.add_argument("--minutes", type=float, default=10)
    c.add_argument("--clients", type=int, default=16)
    c.add_argument("--backend", default="hf")
    c.add_argument("-k", type=int, default=10)
    c.add_argument("--num-beams", type=int, default=10)
    sub.add_parser("docs")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(".cache/vllm").resolve()))
    if args.what == "offline":
        offline(args.run, args.users, args.num_beams, args.batch_size)
    elif args.what == "docs":
        docs()
    elif args.what == "endpoint":
        endpoint(args.run, args.requests, args.clients, args.k, args.num_beams, args.backends)
    else:
        soak(args.run, args.minutes, args.clients, args.k, args.num_beams, args.backend)


if __name__ == "__main__":
    main()
