"""From raw interactions to a prepared dataset: k-core, ordering, leave-last-out.

:func:`prepare` turns :class:`~genrec.data.loaders.RawData` into a
:class:`PreparedDataset`:

1. optionally keep only the earliest interaction of each (user, item) pair;
2. iterative k-core: drop users and items with fewer than ``k`` interactions, again
   and again until nothing changes (one pass is not enough: dropping a user can push
   an item under ``k`` and vice versa);
3. drop users with fewer than 3 interactions, who cannot give a training item, a
   validation target and a test target;
4. order each user's interactions by time, ties broken by the original file order;
5. with ``data.cold_items`` > 0 (the cold-start protocol), hold out a share of items as new
   items: every interaction with them is removed, except where one is a user's last item,
   which stays as that user's test target (see :func:`hold_out_cold_items`).

The item table is sorted by item id string; an item's row there is its index in every
later stage (catalog, semantic IDs, metrics). :func:`prepare_stage` writes the result
into the run folder's ``data`` stage.
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.config import DataConfig, GenrecConfig
from genrec.data.loaders import RawData, load_raw
from genrec.errors import InputError
from genrec.io import atomic_write_json
from genrec.runs import RunFolder

#: Fewest interactions a user needs: one for training, one validation and one test target.
MIN_SEQUENCE_LENGTH = 3

SPLITS = ("valid", "test")
DATA_FILES = ("items.parquet", "sequences.parquet", "dataset.json")
FORMAT_VERSION = 1

# Fixed Parquet settings so that the same dataset always gives the same bytes.
_PARQUET = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True)


def truncate(history: list[str], max_history: int | None) -> list[str]:
    """The most recent ``max_history`` items of a history (all when None or <= 0)."""
    if not max_history or max_history <= 0 or len(history) <= max_history:
        return list(history)
    return list(history[-max_history:])


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


@dataclass
class PreparedDataset:
    """Users' chronological item sequences plus the item table, ready for the later stages.

    Attributes:
        items: ``item_id`` plus the text fields (str), one row per item that survived
            filtering, sorted by item id string. The row position is the item's index.
        sequences: ``user_id``, ``items`` (list of item ids, oldest first) and
            ``timestamps`` (list of int), one row per user, sorted by user id.
        text_fields: the text columns of ``items``.
        default_template: format string over the text fields, used when the config
            sets no template.
        source: where the data came from (format, paths, sha256 of the inputs).
        filters: what preparation did (settings and counts of what was dropped).
        cold_items: ids of the items held out by the cold-start protocol (empty when it is
            off). They appear only as test targets: never in training sequences, validation
            targets or histories.
    """

    items: pd.DataFrame
    sequences: pd.DataFrame
    text_fields: list[str]
    default_template: str
    source: dict[str, Any] = field(default_factory=dict)
    filters: dict[str, Any] = field(default_factory=dict)
    cold_items: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"PreparedDataset({self.n_users} users, {self.n_items} items, "
            f"{self.n_interactions} interactions, source={self.source.get('format')!r})"
        )

    # -- sizes ------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences["items"]))

    def item_index(self) -> dict[str, int]:
        """Item id -> row in :attr:`items` (the item's index everywhere later)."""
        return {item: i for i, item in enumerate(self.items["item_id"])}

    def cold_rows(self) -> list[int]:
        """Rows of the cold-start protocol's held-out items (empty when it is off), ascending."""
        index = self.item_index()
        return sorted(index[i] for i in self.cold_items)

    def warm_rows(self) -> list[int]:
        """Rows of every other item: what training, the semantic-ID fit and the text tasks may see."""
        cold = set(self.cold_rows())
        return [i for i in range(self.n_items) if i not in cold]

    # -- splits -----------------------------------------------------------------------
    def train_sequences(self) -> dict[str, list[str]]:
        """User -> training items (all but the last two), in user-id order."""
        return {u: list(s[:-2]) for u, s in zip(self.sequences["user_id"], self.sequences["items"])}

    def split(self, name: str, max_history: int | None = None) -> list[tuple[str, list[str], str]]:
        """Leave-last-out rows ``(user_id, history, target)`` of a split, in user-id order.

        ``valid``: history = items[:-2], target = items[-2]; ``test``: history =
        items[:-1], target = items[-1]. Histories are whole unless ``max_history``
        keeps only their most recent items.
        """
        if name not in SPLITS:
            raise InputError(f"unknown split {name!r}", f"use one of {', '.join(SPLITS)}")
        cut = 2 if name == "valid" else 1
        return [
            (u, truncate(list(s[:-cut]), max_history), s[-cut])
            for u, s in zip(self.sequences["user_id"], self.sequences["items"])
        ]

    def split_rows(self, name: str, max_users: int = 0, seed: int = 0) -> tuple[list[str], list[list[int]], list[int]]:
        """(user ids, histories as catalog rows, target rows) of a split; ``max_users`` > 0 samples
        that many users with ``seed`` (sorted by user id, so every model sees the same users)."""
        rows = self.split(name)
        if max_users and len(rows) > max_users:
            rows = sorted(random.Random(seed).sample(rows, max_users))
        index = self.item_index()
        return ([u for u, _, _ in rows], [[index[i] for i in h] for _, h, _ in rows], [index[t] for _, _, t in rows])

    def train_rows(self) -> list[list[int]]:
        """Training sequences as catalog rows, in user-id order."""
        index = self.item_index()
        return [[index[i] for i in s] for s in self.train_sequences().values()]

    # -- report -----------------------------------------------------------------------
    def items_without_text(self) -> int:
        """Items whose text fields are all empty (all items when there are no fields)."""
        if not self.text_fields:
            return self.n_items
        has = np.zeros(self.n_items, dtype=bool)
        for f in self.text_fields:
            has |= self.items[f].astype(str).str.strip().ne("").to_numpy()
        return int((~has).sum())

    def stats(self) -> dict[str, Any]:
        """Counts for reports and manifests: sizes, density, split sizes, sequence lengths."""
        lengths = [len(s) for s in self.sequences["items"]]
        n_users, n_items, n = self.n_users, self.n_items, sum(lengths)
        return {
            "users": n_users,
            "items": n_items,
            "interactions": n,
            "density": _sig(n / (n_users * n_items)) if n_users and n_items else 0.0,
            "train_interactions": n - 2 * n_users,
            "valid_targets": n_users,
            "test_targets": n_users,
            "mean_sequence_length": round(n / n_users, 3) if n_users else 0.0,
            "median_sequence_length": float(statistics.median(lengths)) if lengths else 0.0,
            "min_sequence_length": min(lengths, default=0),
            "max_sequence_length": max(lengths, default=0),
            "items_without_text": self.items_without_text(),
            "items_not_in_item_table": int(self.filters.get("items_not_in_item_table", 0)),
            "cold_items": len(self.cold_items),
        }

    # -- files ------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write ``items.parquet``, ``sequences.parquet``, ``stats.json``, ``dataset.json``.

        The bytes depend only on the content: fixed schema and compression, no pandas
        index or metadata, no times.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        items = pa.table(
            {c: pa.array([str(v) for v in self.items[c]], type=pa.string()) for c in ["item_id", *self.text_fields]}
        )
        seqs = pa.table(
            {
                "user_id": pa.array([str(u) for u in self.sequences["user_id"]], type=pa.string()),
                "items": pa.array([list(map(str, s)) for s in self.sequences["items"]], type=pa.list_(pa.string())),
                "timestamps": pa.array(
                    [[int(t) for t in s] for s in self.sequences["timestamps"]], type=pa.list_(pa.int64())
                ),
            }
        )
        pq.write_table(items, out / "items.parquet", **_PARQUET)
        pq.write_table(seqs, out / "sequences.parquet", **_PARQUET)
        _write_json(out / "stats.json", self.stats())
        _write_json(
            out / "dataset.json",
            {
                "format_version": FORMAT_VERSION,
                "text_fields": self.text_fields,
                "default_template": self.default_template,
                "source": self.source,
                "filters": self.filters,
                "cold_items": sorted(self.cold_items),
            },
        )

    @classmethod
    def load(cls, folder: str | Path) -> "PreparedDataset":
        """Read what :meth:`save` wrote (``folder`` is ``RUN/data``, or the run folder itself)."""
        folder = Path(folder)
        if not (folder / "dataset.json").exists() and (folder / "data" / "dataset.json").exists():
            folder = folder / "data"
        run = folder.parent if folder.name == "data" else folder
        missing = [n for n in DATA_FILES if not (folder / n).is_file()]
        if missing:
            raise InputError(
                f"run folder {run} has no prepared data (missing {folder / missing[0]})",
                "run `genrec data prepare CONFIG` first",
            )
        try:
            meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
            items_t = pq.read_table(folder / "items.parquet")
            seqs_t = pq.read_table(folder / "sequences.parquet")
        except (OSError, ValueError, pa.ArrowException) as e:
            raise InputError(
                f"prepared data in {folder} cannot be read ({str(e).splitlines()[0]})",
                "run `genrec data prepare CONFIG` again",
            ) from None
        text_fields = list(meta.get("text_fields", []))
        items = pd.DataFrame({c: pd.Series(items_t.column(c).to_pylist(), dtype=object) for c in items_t.column_names})
        sequences = pd.DataFrame(
            {
                "user_id": pd.Series(seqs_t.column("user_id").to_pylist(), dtype=object),
                "items": pd.Series(seqs_t.column("items").to_pylist(), dtype=object),
                "timestamps": pd.Series(seqs_t.column("timestamps").to_pylist(), dtype=object),
            }
        )
        return cls(
            items,
            sequences,
            text_fields,
            meta.get("default_template", ""),
            meta.get("source", {}),
            meta.get("filters", {}),
            list(meta.get("cold_items", [])),
        )


def split_rows(
    dataset: "PreparedDataset", split: str, max_users: int = 0, seed: int = 0
) -> tuple[list[str], list[list[int]], list[int]]:
    """:meth:`PreparedDataset.split_rows` as a function."""
    return dataset.split_rows(split, max_users, seed)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, sort_keys=True, ensure_ascii=False)


# --------------------------------------------------------------------------- filtering


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Rows kept by the iterative k-core of a user-item interaction list.

    Args:
        users, items: integer codes (0..n-1) of each interaction's user and item.
        k: minimum interactions per user and per item; <= 1 keeps everything.

    Returns:
        (boolean mask of kept rows, number of passes that removed something).
    """
    keep = np.ones(len(users), dtype=bool)
    if k <= 1 or len(users) == 0:
        return keep, 0
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    rounds = 0
    while True:
        u_count = np.bincount(users[keep], minlength=n_users)
        i_count = np.bincount(items[keep], minlength=n_items)
        new = keep & (u_count[users] >= k) & (i_count[items] >= k)
        if new.sum() == keep.sum():
            return keep, rounds
        keep = new
        rounds += 1


def _counts(df: pd.DataFrame) -> dict[str, int]:
    return {"users": int(df["user_id"].nunique()), "items": int(df["item_id"].nunique()), "interactions": int(len(df))}


def prepare(raw: RawData, cfg: DataConfig) -> PreparedDataset:
    """Filter, order and group raw interactions into a :class:`PreparedDataset`.

    Uses ``cfg.dedup`` and ``cfg.kcore``; see the module docstring for the steps.
    Raises InputError when nothing is left.
    """
    inter = raw.interactions
    # original file order breaks timestamp ties, so it is kept as an explicit key
    df = pd.DataFrame(
        {
            "user_id": inter["user_id"].astype(str).to_numpy(dtype=object),
            "item_id": inter["item_id"].astype(str).to_numpy(dtype=object),
            "timestamp": inter["timestamp"].to_numpy(dtype=np.int64),
            "order": np.arange(len(inter), dtype=np.int64),
        }
    )
    before = _counts(df)
    filters: dict[str, Any] = {
        "before": before,
        "dedup": bool(cfg.dedup),
        "kcore": int(cfg.kcore),
        "min_sequence_length": MIN_SEQUENCE_LENGTH,
    }

    # chronological order per user (users by id string); every later step keeps it
    user_codes, _ = pd.factorize(df["user_id"], sort=True)
    df = df.iloc[np.lexsort((df["order"].to_numpy(), df["timestamp"].to_numpy(), user_codes))]
    df = df.reset_index(drop=True)

    if cfg.dedup:
        # rows are in time order, so "first" is the earliest interaction of the pair
        dup = df.duplicated(["user_id", "item_id"], keep="first").to_numpy()
        df = df[~dup].reset_index(drop=True)
        filters["duplicates_removed"] = int(dup.sum())

    u_codes, _ = pd.factorize(df["user_id"])
    i_codes, _ = pd.factorize(df["item_id"])
    keep, rounds = kcore_mask(np.asarray(u_codes), np.asarray(i_codes), int(cfg.kcore))
    pre_kcore = _counts(df)
    df = df[keep].reset_index(drop=True)
    after_kcore = _counts(df)
    filters["kcore_rounds"] = rounds
    filters["kcore_removed"] = {k: pre_kcore[k] - after_kcore[k] for k in pre_kcore}
    if df.empty:
        raise InputError(
            f"dataset is empty after {cfg.kcore}-core filtering ({before['users']} users, "
            f"{before['items']} items before)",
            "lower data.kcore (0 turns it off) or use a larger dataset",
        )

    lengths = df.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    short = lengths < MIN_SEQUENCE_LENGTH
    filters["short_users_removed"] = int(df.loc[short, "user_id"].nunique())
    filters["short_user_interactions_removed"] = int(short.sum())
    df = df[~short].reset_index(drop=True)
    if df.empty:
        raise InputError(
            f"dataset is empty after dropping users with fewer than {MIN_SEQUENCE_LENGTH} "
            f"interactions ({before['users']} users, {before['items']} items before)",
            "use data with longer user histories (each user needs a training item, a validation and a test target)",
        )

    # one row per user: boundaries of the (already sorted) user blocks
    users = df["user_id"].to_numpy(dtype=object)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    bounds = np.r_[starts, len(df)]
    item_arr = df["item_id"].to_numpy(dtype=object)
    ts_arr = df["timestamp"].to_numpy(dtype=np.int64)
    sequences = pd.DataFrame(
        {
            "user_id": pd.Series(users[starts], dtype=object),
            "items": pd.Series([item_arr[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])], dtype=object),
            "timestamps": pd.Series([ts_arr[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])], dtype=object),
        }
    )

    cold: list[str] = []
    if cfg.cold_items > 0:
        sequences, cold = hold_out_cold_items(sequences, df, cfg, filters)
        item_arr = np.array([i for s in sequences["items"] for i in s], dtype=object)
    items = _item_table(sorted(set(item_arr.tolist())), raw, filters)
    return PreparedDataset(
        items, sequences, list(raw.text_fields), raw.default_template, dict(raw.source), filters, cold
    )


def hold_out_cold_items(
    sequences: pd.DataFrame, log: pd.DataFrame, cfg: DataConfig, filters: dict[str, Any]
) -> tuple[pd.DataFrame, list[str]]:
    """The cold-start protocol: (sequences without the held-out items, the held-out item ids).

    ``round(cfg.cold_items * items)`` items are held out: the last to appear in ``log``
    (first interaction by time, then file order) for ``newest``, a uniform draw with
    ``cfg.cold_seed`` for ``random``. Every interaction with one is removed, except when it is a
    user's last item: it stays there as the test target, so a model meets a cold item only
    when it is asked to recommend it. Users left with fewer than 3 items are dropped; held-out
    items that are nobody's test target leave the data. ``filters["cold"]`` records the counts.
    """
    firsts = log.sort_values(["timestamp", "order"], kind="stable").drop_duplicates("item_id")["item_id"].tolist()
    n_cold = int(round(cfg.cold_items * len(firsts)))
    if cfg.cold_selection == "newest":
        chosen = set(firsts[len(firsts) - n_cold :]) if n_cold else set()
    else:
        rng = np.random.default_rng(cfg.cold_seed)
        pool = sorted(firsts)
        chosen = {pool[i] for i in rng.choice(len(pool), size=n_cold, replace=False)}
    kept_items, kept_ts, users = [], [], []
    removed = 0
    for u, items, ts in zip(sequences["user_id"], sequences["items"], sequences["timestamps"]):
        keep = [j for j in range(len(items) - 1) if items[j] not in chosen] + [len(items) - 1]
        removed += len(items) - len(keep)
        if len(keep) < MIN_SEQUENCE_LENGTH:
            continue
        users.append(u)
        kept_items.append([items[j] for j in keep])
        kept_ts.append([ts[j] for j in keep])
    out = pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype=object),
            "items": pd.Series(kept_items, dtype=object),
            "timestamps": pd.Series(kept_ts, dtype=object),
        }
    )
    if out.empty:
        raise InputError(
            f"no user is left after holding out {n_cold} cold items",
            "lower data.cold_items (0.1 is the documented protocol)",
        )
    targets = [s[-1] for s in kept_items]
    cold = sorted(chosen & set(targets))
    filters["cold"] = {
        "share": float(cfg.cold_items),
        "selection": cfg.cold_selection,
        "seed": int(cfg.cold_seed) if cfg.cold_selection == "random" else None,
        "held_out": n_cold,
        "test_targets": len(cold),
        "cold_target_users": int(sum(t in chosen for t in targets)),
        "interactions_removed": int(removed),
        "users_removed": int(len(sequences) - len(out)),
    }
    return out, cold


def _item_table(item_ids: list[str], raw: RawData, filters: dict[str, Any]) -> pd.DataFrame:
    """Text of the surviving items; items the item table lacks get empty text (counted)."""
    table = raw.items.copy()
    table["item_id"] = table["item_id"].astype(str)
    table = table.drop_duplicates("item_id", keep="first").set_index("item_id")
    known = table.index.isin(item_ids)
    filters["items_not_in_item_table"] = int(len(item_ids) - known.sum())
    filters["item_table_rows_unused"] = int((~known).sum())
    out = pd.DataFrame({"item_id": pd.Series(item_ids, dtype=object)})
    for f in raw.text_fields:
        col = table[f].reindex(item_ids) if f in table.columns else pd.Series(index=item_ids, dtype=object)
        out[f] = pd.Series([v if isinstance(v, str) else "" for v in col.tolist()], dtype=object)
    return out


# --------------------------------------------------------------------------- stage


def prepare_stage(cfg: GenrecConfig) -> PreparedDataset:
    """Load, prepare and write the run folder's ``data`` stage; returns the dataset.

    The stage is written atomically (see :meth:`genrec.runs.RunFolder.stage`): a
    failure leaves the run folder as it was.
    """
    base = Path(cfg.config_path).parent if cfg.config_path else None
    raw = load_raw(cfg.data, base)
    dataset = prepare(raw, cfg.data)
    info = {"source": dataset.source, "filters": dataset.filters, "counts": dataset.stats()}
    with RunFolder(cfg.run_dir).stage("data", info) as out:
        dataset.save(out)
    return dataset
