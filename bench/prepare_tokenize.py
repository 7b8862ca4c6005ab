"""Wall time and peak memory of `genrec data prepare` + `genrec tokenize` per dataset.

Each stage runs as its own process (so peak RSS is that stage's own) with a fresh
embedding cache, i.e. a cold run including the MiniLM encoding:

    .venv/bin/python bench/prepare_tokenize.py [--configs configs/beauty.yaml configs/scientific.yaml]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one command, measured by GNU time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "-o", out.name, *cmd],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seconds, kib = out.read().split()[-2:]
    return float(seconds), int(kib) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--configs", nargs="+", default=["configs/beauty.yaml", "configs/scientific.yaml", "configs/demo.yaml"]
    )
    args = ap.parse_args()
    genrec = [sys.executable, "-m", "genrec.cli"]
    print(
        "| dataset | users | items | prepare s | prepare peak MiB | tokenize s | tokenize peak MiB "
        "| collisions before dedup | depth |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for config in args.configs:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            sets = ["-s", f"run_dir={run}", "-s", f"tokenize.embedding.cache_dir={tmp}/cache"]
            p_s, p_mem = timed([*genrec, "data", "prepare", config, *sets])
            t_s, t_mem = timed([*genrec, "tokenize", config, *sets])
            stats = json.loads((run / "data" / "stats.json").read_text())
            report = json.loads((run / "tokenize" / "report.json").read_text())
            print(
                f"| {Path(config).stem} | {stats['users']} | {stats['items']} | {p_s:.1f} | {p_mem:.0f} | "
                f"{t_s:.1f} | {t_mem:.0f} | {report['collision_rate']:.1%} | {report['depth']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
