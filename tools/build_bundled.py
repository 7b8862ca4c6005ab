"""Derive the bundled demo set (genrec/data/bundled/) from MovieTweetings 100K.

    .venv/bin/python tools/build_bundled.py [--source ../shared/data/movietweetings-100k]

Reads ``ratings.dat`` and ``movies.dat`` with the package's own MovieTweetings loader,
keeps the iterative 5-core (users and items with at least 5 ratings each) and writes

* ``interactions.parquet``: user_id, item_id, rating (int8, 0-10), timestamp (Unix
  seconds), the surviving ratings in their original file order;
* ``items.parquet``: item_id (IMDb id, leading zeros kept), title, genres ("A, B").

The output depends only on the input (fixed schema, zstd, no metadata), so running it
twice gives the same bytes. ``users.dat`` (Twitter ids) is never read or shipped.
The bundled README's counts come from what this script prints.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from genrec.config import DataConfig  # noqa: E402
from genrec.data.dataset import kcore_mask, prepare  # noqa: E402
from genrec.data.loaders import load_movietweetings  # noqa: E402

KCORE = 5
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "movietweetings-100k"
OUT = REPO / "genrec" / "data" / "bundled"
PARQUET = dict(compression="zstd", compression_level=19, use_dictionary=True, write_statistics=False)


def build(source: Path, out: Path) -> dict[str, int]:
    """Write the two bundled files into ``out``; returns the 5-core counts."""
    raw = load_movietweetings(source)
    inter = raw.interactions
    u_codes, _ = pd.factorize(inter["user_id"])
    i_codes, _ = pd.factorize(inter["item_id"])
    keep, rounds = kcore_mask(np.asarray(u_codes), np.asarray(i_codes), KCORE)
    kept = inter[keep]
    ratings = kept["rating"].to_numpy()
    assert np.all(ratings == np.round(ratings)) and ratings.min() >= 0 and ratings.max() <= 10
    inter_table = pa.table(
        {
            "user_id": pa.array(kept["user_id"].tolist(), type=pa.string()),
            "item_id": pa.array(kept["item_id"].tolist(), type=pa.string()),
            "rating": pa.array(ratings.astype(np.int8), type=pa.int8()),
            "timestamp": pa.array(kept["timestamp"].to_numpy(dtype=np.int64), type=pa.int64()),
        }
    )
    item_ids = sorted(set(kept["item_id"]))
    items = raw.items.drop_duplicates("item_id").set_index("item_id").reindex(item_ids).fillna("")
    items_table = pa.table(
        {
            "item_id": pa.array(item_ids, type=pa.string()),
            "title": pa.array(items["title"].tolist(), type=pa.string()),
            "genres": pa.array(items["genres"].tolist(), type=pa.string()),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(inter_table, out / "interactions.parquet", **PARQUET)
    pq.write_table(items_table, out / "items.parquet", **PARQUET)

    # the shipped files must prepare to exactly the 5-core of the source
    ds = prepare(raw, DataConfig(format="movietweetings", kcore=KCORE))
    counts = {
        "raw_users": int(inter["user_id"].nunique()),
        "raw_items": int(inter["item_id"].nunique()),
        "raw_interactions": int(len(inter)),
        "kcore_rounds": rounds,
        "users": ds.n_users,
        "items": ds.n_items,
        "interactions": ds.n_interactions,
        "items_without_genres": int((items["genres"] == "").sum()),
    }
    assert (counts["users"], counts["items"], counts["interactions"]) == (
        len(inter_table.column("user_id").unique()),
        len(item_ids),
        inter_table.num_rows,
    )
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="MovieTweetings 100K folder")
    ap.add_argument("--out", type=Path, default=OUT, help="output folder (default: the package's)")
    args = ap.parse_args()
    counts = build(args.source, args.out)
    for k, v in counts.items():
        print(f"{k}: {v:,}")
    for name in ("interactions.parquet", "items.parquet"):
        data = (args.out / name).read_bytes()
        print(f"{name}: {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
