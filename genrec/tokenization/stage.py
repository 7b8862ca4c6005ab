"""The `genrec tokenize` stage: prepared data -> item vectors -> unique semantic IDs -> catalog.

Writes ``RUN/tokenize/``:

* ``catalog.parquet`` / ``catalog.json``: the catalog (see :mod:`genrec.tokenization.catalog`);
* ``sid_tokenizer/``: the fitted quantizer, so new items get IDs without refitting;
* ``item_vectors.npy``: the vectors that were quantized (for inspection and new-item checks);
* ``report.json`` and ``code_usage.png``: collision rate, codebook usage, reconstruction error.

Under the cold-start protocol (``data.cold_items``) the codebooks are fit on the warm items
only; the held-out items then get their IDs from their text as ``genrec items add`` gives
them (:func:`~genrec.tokenization.updates.new_item_vectors` and
:meth:`~genrec.tokenization.semantic_ids.SemanticIdTokenizer.assign_new`, no refit).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from genrec.config import GenrecConfig
from genrec.data import PreparedDataset
from genrec.errors import InputError
from genrec.io import cache_dir
from genrec.runs import RunFolder
from genrec.tokenization.catalog import Catalog
from genrec.tokenization.embeddings import (
    collaborative_embeddings,
    combine,
    item_texts,
    sasrec_embeddings,
    text_embeddings,
)
from genrec.tokenization.semantic_ids import SemanticIdTokenizer, plot_code_usage
from genrec.tokenization.updates import new_item_vectors

#: RUN/tokenize/ folder of the SASRec fitted for `collab_method: sasrec`
SASREC_DIR = "collab_sasrec"
TITLE_CHARS = 80


def display_titles(dataset: PreparedDataset, texts: list[str]) -> list[str]:
    """Short display text per item: its title field, else the start of its text."""
    items = dataset.items
    if "title" in items.columns:
        raw = items["title"].fillna("").astype(str).tolist()
    else:
        raw = [""] * len(items)
    out = []
    for title, text, item_id in zip(raw, texts, items["item_id"]):
        t = title.strip() or text.strip()
        out.append((t[: TITLE_CHARS - 1] + "…") if len(t) > TITLE_CHARS else (t or str(item_id)))
    return out


def item_vectors(dataset: PreparedDataset, cfg: GenrecConfig, texts: list[str]) -> tuple[np.ndarray, dict, dict]:
    """(vectors to quantize, report, fitted models to keep by folder name), from the configured source.

    The report holds ``collab_width`` (columns of the collaborative part, which new items
    added by text get as zeros) and, for ``collab_method: sasrec``, how the SASRec fit went
    (read from the model, also when it came from the cache): seed, best epoch, its validation
    NDCG@10, epochs run, training seconds and the cache folder it was loaded from (or null).
    """
    ecfg = cfg.tokenize.embedding
    vecs, report, fitted = [], {}, {}
    cache = cfg.resolve_path(ecfg.cache_dir) if ecfg.cache_dir else cache_dir("embeddings")
    if ecfg.source in ("text", "both"):
        if not any(t.strip() for t in texts):
            raise InputError(
                "the items have no text to embed", "set tokenize.embedding.source: collab (IDs from interactions)"
            )
        vecs.append(text_embeddings(texts, model=ecfg.model, batch_size=ecfg.batch_size, cache_dir=cache))
    if ecfg.source in ("collab", "both"):
        if ecfg.collab_method == "sasrec":
            collab, rec = sasrec_embeddings(dataset, cfg.sasrec, cache_dir=cache)
            fitted[SASREC_DIR] = rec
            report["sasrec"] = {
                "seed": rec.config.seed,
                "best_epoch": rec.best_epoch,
                "best_valid_ndcg@10": round(rec.best_valid_ndcg, 5),
                "epochs_run": rec.epochs_run,
                "train_seconds": round(rec.train_seconds, 1),
                "loaded_from_cache": str(rec.loaded_from) if rec.loaded_from is not None else None,
            }
        else:
            index = dataset.item_index()
            seqs = [[index[i] for i in s] for s in dataset.train_sequences().values()]
            collab = collaborative_embeddings(
                seqs, dataset.n_items, dim=ecfg.collab_dim, window=ecfg.collab_window, seed=cfg.seed
            )
        report["collab_width"] = int(collab.shape[1])
        vecs.append(collab)
    return (vecs[0] if len(vecs) == 1 else combine(vecs[0], vecs[1])), report, fitted


def tokenize_stage(cfg: GenrecConfig) -> Catalog:
    """Run the tokenize stage for ``cfg`` and return the catalog."""
    run = RunFolder(cfg.run_dir)
    dataset = PreparedDataset.load(run / "data")
    template = cfg.tokenize.embedding.template or dataset.default_template
    texts = item_texts(dataset.items, template)
    ecfg = cfg.tokenize.embedding
    cold = dataset.cold_rows()
    if cold and ecfg.source == "collab":
        raise InputError(
            "the cold-start protocol (data.cold_items) needs semantic IDs from item text, "
            "but tokenize.embedding.source is collab",
            "set tokenize.embedding.source: text or both",
        )
    t0 = time.perf_counter()
    X, vec_report, fitted = item_vectors(dataset, cfg, texts)
    t_embed = time.perf_counter() - t0
    embedding = {
        "source": ecfg.source,
        "model": ecfg.model,
        "template": template,
        "batch_size": ecfg.batch_size,
        "collab_dim": vec_report.get("collab_width", ecfg.collab_dim),
        "collab_method": ecfg.collab_method,
        "text_fields": list(dataset.text_fields),
    }
    sid = SemanticIdTokenizer(cfg.tokenize.quantizer, cfg.tokenize.min_dedup_codes)
    t0 = time.perf_counter()
    if cold:
        warm = dataset.warm_rows()
        sid.fit(X[warm])
        codes = np.zeros((len(X), sid.codes_.shape[1]), dtype=np.int64)
        codes[warm] = sid.codes_
        # the items-add path: text vectors (zeros for the collaborative part), the fitted codebooks
        cache = cfg.resolve_path(ecfg.cache_dir) if ecfg.cache_dir else cache_dir("embeddings")
        cold_vectors = new_item_vectors([texts[i] for i in cold], embedding, cache_dir=cache)
        codes[cold] = sid.assign_new(cold_vectors, sid.codes_)
        X[cold] = cold_vectors
        vec_report["cold_items"] = len(cold)
    else:
        sid.fit(X)
        codes = sid.codes_
    t_fit = time.perf_counter() - t0
    catalog = Catalog(
        dataset.items["item_id"].astype(str).tolist(),
        codes,
        sid.level_sizes_,
        display_titles(dataset, texts),
        texts,
    )
    report = dict(sid.report_)
    report.update(
        {
            "n_items": len(catalog),
            "depth": catalog.depth,
            "level_sizes": catalog.level_sizes,
            "embedding_source": cfg.tokenize.embedding.source,
            "embedding_dim": int(X.shape[1]),
            "seconds_embed": round(t_embed, 2),
            "seconds_fit": round(t_fit, 2),
            "template": template,
            "collab_method": cfg.tokenize.embedding.collab_method if cfg.tokenize.embedding.source != "text" else None,
            **vec_report,
        }
    )
    info = {
        "method": cfg.tokenize.quantizer.method,
        "levels": cfg.tokenize.quantizer.levels,
        "codebook_size": cfg.tokenize.quantizer.codebook_size,
        "seed": cfg.tokenize.quantizer.seed,
        "embedding_source": cfg.tokenize.embedding.source,
        "collab_method": report["collab_method"],
        "collision_rate": report.get("collision_rate"),
        "level_sizes": catalog.level_sizes,
    }
    if "sasrec" in report:
        info["sasrec"] = report["sasrec"]
    with run.stage("tokenize", info) as out:
        catalog.save(out)
        sid.save(out / "sid_tokenizer")
        np.save(out / "item_vectors.npy", X.astype(np.float32))
        (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
        plot_code_usage(sid.codes_, sid.level_sizes_, out / "code_usage.png")
        for name, model in fitted.items():
            model.save(out / name)
        # what new items need to be embedded the same way later (genrec items add)
        (out / "embedding.json").write_text(json.dumps(embedding, indent=2) + "\n")
    return catalog


def load_catalog(run_dir: str | Path) -> Catalog:
    """The catalog of a run folder."""
    return Catalog.load(Path(run_dir) / "tokenize")
