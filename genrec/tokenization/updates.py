"""Catalog updates without retraining: new items in, removed items out.

A new item's text is embedded the same way the run's items were, encoded with the
fitted codebooks (no refit), given a unique semantic ID (free slots of the
disambiguation level first, then the next-nearest last-level codes), and written
into the run's catalog. The trie is built from the catalog, so whoever reloads
the catalog (a server, `genrec recommend`) can emit the new items and no longer
emits removed ones.

An edit reads the catalog, changes it and writes it back: two at once would each write
a catalog without the other's change. Every edit holds :func:`catalog_lock` (an exclusive
lock on ``RUN/tokenize/.catalog.lock``), which serializes `genrec items` commands and a
server's edits alike.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from genrec.errors import InputError
from genrec.io import atomic_files
from genrec.tokenization.catalog import Catalog
from genrec.tokenization.embeddings import combine, empty_texts, item_texts, text_embeddings
from genrec.tokenization.semantic_ids import SemanticIdTokenizer


def _tokenize_dir(run: str | Path) -> Path:
    folder = Path(run) / "tokenize"
    if not (folder / "embedding.json").is_file():
        raise InputError(f"{run} has no tokenize stage", "run `genrec tokenize CONFIG` first")
    return folder


@contextlib.contextmanager
def catalog_lock(run: str | Path) -> Iterator[None]:
    """Hold the run's catalog for one read-modify-write (blocks while another edit runs).

    An OS file lock, so it also holds across processes, and is released when its holder
    dies (a crashed edit never blocks the next one).
    """
    folder = _tokenize_dir(run)
    with open(folder / ".catalog.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_new_items(items: pd.DataFrame, texts: Sequence[str], text_fields: Sequence[str]) -> None:
    """Refuse ids that are empty or repeat, and items with no text to embed."""
    seen: set[str] = set()
    for i in items["item_id"]:
        if not i.strip():
            raise InputError("an item has an empty item_id", "give every item a non-empty id")
        if i in seen:
            raise InputError(f"item {i!r} is given twice", "give each new item once")
        seen.add(i)
    # an item embedded from no text would land wherever the empty string does: a meaningless ID
    empty = np.flatnonzero(empty_texts(texts))
    if len(empty):
        raise InputError(
            f"item {items['item_id'].iloc[empty[0]]!r} has no text",
            f"fill at least one of the run's text fields ({', '.join(text_fields)})",
        )


def _check_not_in(catalog: Catalog, item_ids: Iterable[str]) -> None:
    dup = [i for i in item_ids if i in catalog]
    if dup:
        raise InputError(f"item {dup[0]!r} is already in the catalog", "use new item ids")


def _text(value: object) -> str:
    """A cell as a title: missing values (None, NaN) are empty."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value).strip()


def read_items_file(path: str | Path) -> pd.DataFrame:
    """Items to add: JSONL, JSON list, CSV/TSV or Parquet with an `item_id` column."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"items file not found: {p}", "pass a JSONL/CSV/Parquet file with item_id and text fields")
    try:
        if p.suffix == ".parquet":
            df = pd.read_parquet(p)
        elif p.suffix in (".csv", ".tsv"):
            df = pd.read_csv(p, sep="\t" if p.suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        elif p.suffix == ".jsonl":
            df = pd.read_json(p, lines=True, dtype=False)
        elif p.suffix == ".json":
            df = pd.DataFrame(json.loads(p.read_text()))
        else:
            raise InputError(f"unknown items file type {p.suffix!r} ({p})", "use .jsonl, .json, .csv, .tsv or .parquet")
    except (ValueError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read items file {p}: {str(e).splitlines()[0]}", "check its format") from None
    if "item_id" not in df.columns:
        raise InputError(
            f"items file {p} has no item_id column (columns: {', '.join(map(str, df.columns))})",
            "add an item_id column",
        )
    df["item_id"] = df["item_id"].astype(str)
    return df


def new_item_vectors(texts: Sequence[str], emb: dict, cache_dir: str | Path | None = None) -> np.ndarray:
    """Vectors of items that have text and no interactions, as the run's quantizer expects them.

    ``emb`` is the run's ``tokenize/embedding.json``. The text part is embedded with the run's
    model; with ``source: both`` the collaborative part is zeros (a new item has no
    interactions), so the text part alone places it.
    """
    X = text_embeddings(
        texts, model=emb["model"], batch_size=emb["batch_size"], show_progress=False, cache_dir=cache_dir
    )
    if emb["source"] == "both":
        X = combine(X, np.zeros((len(X), emb["collab_dim"]), dtype=np.float32))
    return X


def add_items(run: str | Path, items: pd.DataFrame) -> list[tuple[str, str]]:
    """Give ``items`` (item_id + text fields) unique semantic IDs and add them to the run's catalog.

    Returns (item_id, semantic ID) pairs. The catalog is rewritten atomically, under
    :func:`catalog_lock`.
    """
    folder = _tokenize_dir(run)
    emb = json.loads((folder / "embedding.json").read_text())
    if emb["source"] == "collab":
        raise InputError(
            "this run's IDs come from interactions only (embedding.source: collab), "
            "so new items without interactions cannot be placed",
            "tokenize with embedding.source: text or both to add items by text",
        )
    items = items.copy()
    items["item_id"] = items["item_id"].astype(str)
    for f in emb["text_fields"]:
        if f not in items.columns:
            items[f] = ""
    texts = item_texts(items, emb["template"])
    _check_new_items(items, texts, emb["text_fields"])
    titles = [_text(t) for t in items["title"]] if "title" in items.columns else [""] * len(items)
    titles = [t or x[:80] for t, x in zip(titles, texts)]
    _check_not_in(Catalog.load(folder), items["item_id"])  # before loading the encoder; again under the lock
    # embedding needs no catalog: done before taking the lock, so edits wait only for writes
    X = new_item_vectors(texts, emb)
    with catalog_lock(run):
        catalog = Catalog.load(folder)
        _check_not_in(catalog, items["item_id"])
        sid = SemanticIdTokenizer.load(folder / "sid_tokenizer")
        codes = sid.assign_new(X, catalog.codes)
        new = catalog.with_items(items["item_id"].tolist(), codes, titles, texts)
        _write_catalog(folder, new)
    return [(i, new.sid_of(i)) for i in items["item_id"]]


def add_items_from_file(run: str | Path, path: str | Path) -> list[tuple[str, str]]:
    return add_items(run, read_items_file(path))


def remove_items(run: str | Path, item_ids: Sequence[str]) -> int:
    """Remove items from the run's catalog; returns the new catalog size.

    Unknown ids remove nothing (an error), and so does removing every item: a catalog needs
    one item to recommend.
    """
    folder = _tokenize_dir(run)
    with catalog_lock(run):
        catalog = Catalog.load(folder)
        if len(set(item_ids) & set(catalog.item_ids)) >= len(catalog):
            raise InputError(
                f"removing these {len(set(item_ids))} items would leave the catalog empty",
                "keep at least one item (add the new ones first)",
            )
        new = catalog.without_items(item_ids)
        _write_catalog(folder, new)
    return len(new)


def _write_catalog(folder: Path, catalog: Catalog) -> None:
    """Write the run's catalog, and the exported model's catalog + trie when there is one.

    The exported folder (RUN/model) is what `genrec recommend` and `genrec serve` read, so
    it follows every change; a server picks it up on `POST /v1/catalog/reload`.
    """
    _replace_catalog(folder, catalog)
    model_dir = folder.parent / "model"
    if (model_dir / "genrec.json").is_file():
        from transformers import AutoTokenizer

        from genrec.tokenization.trie import ItemTrie

        tok = AutoTokenizer.from_pretrained(model_dir)
        trie = ItemTrie(catalog.token_ids(tok), vocab_size=len(tok))
        with atomic_files(model_dir) as tmp:
            catalog.save(tmp)
            trie.save(tmp)


def _replace_catalog(folder: Path, catalog: Catalog) -> None:
    with atomic_files(folder) as tmp:  # a reader never sees half a catalog
        catalog.save(tmp)
