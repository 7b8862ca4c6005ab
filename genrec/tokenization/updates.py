"""Catalog updates without retraining: new items in, removed items out.

A new item's text is embedded the same way the run's items were, encoded with the
fitted codebooks (no refit), given a unique semantic ID (free slots of the
disambiguation level first, then the next-nearest last-level codes), and written
into the run's catalog. The trie is built from the catalog, so whoever reloads
the catalog (a server, `genrec recommend`) can emit the new items and no longer
emits removed ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from genrec.errors import GenrecError
from genrec.tokenization.catalog import Catalog
from genrec.tokenization.embeddings import item_texts, text_embeddings
from genrec.tokenization.semantic_ids import SemanticIdTokenizer


def _tokenize_dir(run: str | Path) -> Path:
    folder = Path(run) / "tokenize"
    if not (folder / "embedding.json").is_file():
        raise GenrecError(f"{run} has no tokenize stage", "run `genrec tokenize CONFIG` first")
    return folder


def read_items_file(path: str | Path) -> pd.DataFrame:
    """Items to add: JSONL, JSON list, CSV/TSV or Parquet with an `item_id` column."""
    p = Path(path)
    if not p.is_file():
        raise GenrecError(f"items file not found: {p}", "pass a JSONL/CSV/Parquet file with item_id and text fields")
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
            raise GenrecError(f"unknown items file type {p.suffix!r} ({p})", "use .jsonl, .json, .csv, .tsv or .parquet")
    except (ValueError, json.JSONDecodeError) as e:
        raise GenrecError(f"cannot read items file {p}: {str(e).splitlines()[0]}", "check its format") from None
    if "item_id" not in df.columns:
        raise GenrecError(f"items file {p} has no item_id column (columns: {', '.join(map(str, df.columns))})",
                          "add an item_id column")
    df["item_id"] = df["item_id"].astype(str)
    return df


def add_items(run: str | Path, items: pd.DataFrame) -> list[tuple[str, str]]:
    """Give ``items`` (item_id + text fields) unique semantic IDs and add them to the run's catalog.

    Returns (item_id, semantic ID) pairs. The catalog is rewritten atomically.
    """
    folder = _tokenize_dir(run)
    emb = json.loads((folder / "embedding.json").read_text())
    if emb["source"] == "collab":
        raise GenrecError("this run's IDs come from interactions only (embedding.source: collab), "
                          "so new items without interactions cannot be placed",
                          "tokenize with embedding.source: text or both to add items by text")
    catalog = Catalog.load(folder)
    dup = [i for i in items["item_id"] if i in catalog]
    if dup:
        raise GenrecError(f"item {dup[0]!r} is already in the catalog", "use new item ids")
    for f in emb["text_fields"]:
        if f not in items.columns:
            items[f] = ""
    texts = item_texts(items, emb["template"])
    X = text_embeddings(texts, model=emb["model"], batch_size=emb["batch_size"], show_progress=False)
    if emb["source"] == "both":
        from genrec.tokenization.embeddings import combine
        X = combine(X, np.zeros((len(X), emb["collab_dim"]), dtype=np.float32))
    sid = SemanticIdTokenizer.load(folder / "sid_tokenizer")
    codes = sid.assign_new(X, catalog.codes)
    titles = [str(t) for t in items["title"]] if "title" in items.columns else [t[:80] for t in texts]
    new = catalog.with_items(items["item_id"].tolist(), codes, titles, texts)
    _write_catalog(folder, new)
    return [(i, new.sid_of(i)) for i in items["item_id"]]


def add_items_from_file(run: str | Path, path: str | Path) -> list[tuple[str, str]]:
    return add_items(run, read_items_file(path))


def remove_items(run: str | Path, item_ids: Sequence[str]) -> int:
    """Remove items from the run's catalog; returns the new catalog size."""
    folder = _tokenize_dir(run)
    new = Catalog.load(folder).without_items(item_ids)
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

        from genrec.tokenization.trie import TRIE_FILE, ItemTrie

        tok = AutoTokenizer.from_pretrained(model_dir)
        trie = ItemTrie(catalog.token_ids(tok), vocab_size=len(tok))
        _replace_catalog(model_dir, catalog)
        tmp = model_dir / ".trie.tmp"
        tmp.mkdir(exist_ok=True)
        trie.save(tmp)
        (tmp / TRIE_FILE).replace(model_dir / TRIE_FILE)
        tmp.rmdir()


def _replace_catalog(folder: Path, catalog: Catalog) -> None:
    # write beside, then rename: a reader never sees half a catalog
    tmp = folder / ".catalog.tmp"
    tmp.mkdir(exist_ok=True)
    catalog.save(tmp)
    for name in ("catalog.parquet", "catalog.json"):
        (tmp / name).replace(folder / name)
    tmp.rmdir()
