"""How residual k-means (the default quantizer) scales with the catalog size.

Fits :class:`~genrec.tokenization.quantizers.ResidualKMeans` (3 levels x 256 codes,
25 iterations) on synthetic 384-d unit vectors (a mixture of 1,000 Gaussians, like
sentence embeddings of a large catalog) and prints a markdown table of wall time and
peak memory per size.

Each size runs in its own subprocess so that it has its own peak RSS: the child
generates the data, resets the kernel's high-water mark (``echo 5 >
/proc/self/clear_refs``), fits and encodes, and reports ``VmHWM`` minus the RSS it
had before fitting (the data itself is not counted in the growth).

Sampling: faiss trains each level on at most ``max_points_per_centroid * K`` rows
(default 256 * 256 = 65,536 rows, drawn with the seed) and then assigns every row, so
training cost is flat above ~65k items and only the assignment (and the residual copy
of the data) grows with n.

The synthetic noise is isotropic, so the "unique L-codes" column says little about
real catalogs (see the ResidualKMeans docstring for those); time and memory are the
point here.

    .venv/bin/python bench/kmeans_scaling.py                 # 10k, 100k, 1M
    .venv/bin/python bench/kmeans_scaling.py --sizes 10k,100k --max-points-per-centroid 128
    .venv/bin/python bench/kmeans_scaling.py --threads 1 --residual direction
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

DIM = 384


def parse_size(text: str) -> int:
    """``10k`` -> 10000, ``1M`` -> 1000000, ``2500`` -> 2500."""
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def proc_status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return -1


def synthetic(n: int, dim: int = DIM, centres: int = 1000, noise: float = 0.6, seed: int = 0):
    """Unit vectors around random centres, generated in chunks (peak ~ the output size)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    C = rng.standard_normal((centres, dim), dtype=np.float32)
    X = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        part = C[rng.integers(0, centres, m)] + noise * rng.standard_normal((m, dim), dtype=np.float32)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        X[s : s + m] = part
    return X


def child(n: int, args: argparse.Namespace) -> dict:
    import faiss  # noqa: F401  (imported before the memory baseline: its import is not the fit's)
    import numpy as np

    from genrec.tokenization.quantizers import ResidualKMeans

    t0 = time.perf_counter()
    X = synthetic(n, seed=args.seed)
    t_data = time.perf_counter() - t0
    try:  # reset the high-water mark so VmHWM measures the fit only
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    rss0 = proc_status("VmRSS")
    q = ResidualKMeans(
        levels=args.levels,
        codebook_size=args.codebook_size,
        n_iter=args.iters,
        seed=args.seed,
        max_points_per_centroid=args.max_points_per_centroid,
        num_threads=args.threads,
        residual=args.residual,
        init=args.init,
    )
    t0 = time.perf_counter()
    codes = q.fit_encode(X)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = q.encode(X)
    t_enc = time.perf_counter() - t0
    hwm = proc_status("VmHWM")
    assert (again == codes).all()
    return {
        "n": n,
        "data_s": t_data,
        "fit_s": t_fit,
        "encode_s": t_enc,
        "data_mb": X.nbytes / 2**20,
        "rss_before_mb": rss0 / 2**20,
        "peak_growth_mb": (hwm - rss0) / 2**20,
        "hwm_reset": reset,
        "rel_error": q.inertia_[-1] / float((X.astype(np.float64) ** 2).sum(1).mean()),
        "unique_codes": int(len(np.unique(codes, axis=0))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10k,100k,1M", help="comma-separated catalog sizes (k/M suffixes)")
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codebook-size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument(
        "--max-points-per-centroid",
        type=int,
        default=256,
        help="faiss trains each level on at most this * K rows (faiss's default: 256)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="faiss threads (default: faiss's, = cores)")
    ap.add_argument("--residual", default="l2", choices=["l2", "direction"], help="ResidualKMeans(residual=...)")
    ap.add_argument("--init", default="random", choices=["random", "kmeans++"], help="ResidualKMeans(init=...)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args)))
        return
    import faiss

    rows = []
    for size in args.sizes.split(","):
        n = parse_size(size)
        cmd = [sys.executable, __file__, "--child", str(n)] + [
            a for a in sys.argv[1:] if not a.startswith("--sizes") and a != args.sizes
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"size {n} failed")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"done {n:,}: fit {r['fit_s']:.1f}s", file=sys.stderr)
    print(
        f"\nresidual k-means {args.levels} x {args.codebook_size}, {args.iters} iters, d={DIM}, "
        f"max_points_per_centroid={args.max_points_per_centroid}, residual={args.residual}, "
        f"init={args.init}, faiss {faiss.__version__}, "
        f"{args.threads or faiss.omp_get_max_threads()} threads\n"
    )
    print(
        "| items | data (MB) | fit + encode (s) | encode again (s) | peak RSS growth (MB) | "
        "relative error | unique L-codes |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['data_mb']:.0f} | {r['fit_s']:.1f} | {r['encode_s']:.1f} | "
            f"{r['peak_growth_mb']:.0f}{'' if r['hwm_reset'] else '*'} | {r['rel_error']:.3f} | "
            f"{r['unique_codes']:,} |"
        )
    if not all(r["hwm_reset"] for r in rows):
        print("\n* high-water mark could not be reset: includes data generation")


if __name__ == "__main__":
    main()
