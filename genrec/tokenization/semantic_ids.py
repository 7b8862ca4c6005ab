"""Unique semantic IDs: quantizer codes + a disambiguation level, reports, new items.

A quantizer gives each item L codes; items with the same L codes are told apart by
TIGER's extra level (0, 1, 2, ... within each group). :class:`SemanticIdTokenizer`
does both, reports how good the codes are (:func:`code_report`), and places new items
without refitting (:meth:`SemanticIdTokenizer.assign_new`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from genrec.config import QuantizerConfig, from_dict
from genrec.errors import InputError
from genrec.tokenization.quantizers import Quantizer, build_quantizer, check_vectors, load_quantizer, quantizer_file

# --------------------------------------------------------------------------- disambiguation


def _group_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group id of each row (rows with equal codes share one) and the size of each group."""
    if codes.shape[1] == 0:
        return np.zeros(len(codes), dtype=np.int64), np.array([len(codes)], dtype=np.int64)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.ravel().astype(np.int64), counts.astype(np.int64)


def disambiguate(codes: np.ndarray, min_size: int = 8) -> tuple[np.ndarray, int]:
    """Append TIGER's disambiguation level so that every row is unique.

    Items sharing all L codes get 0, 1, 2, ... in row order; unique items get 0.

    Args:
        codes: int ``(n, L)`` quantizer codes.
        min_size: the extra level has at least this many codes (free slots for items
            added later).

    Returns:
        ``(n, L + 1)`` int64 codes and the size of the extra level,
        ``max(min_size, largest group)``.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2:
        raise ValueError(f"codes must be (n, L), got shape {codes.shape}")
    n = len(codes)
    extra = np.zeros(n, dtype=np.int64)
    size = max(int(min_size), 1)
    if n:
        group, counts = _group_ids(codes)
        # stable sort keeps row order inside each group, so the rank is deterministic
        order = np.argsort(group, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        extra[order] = np.arange(n) - np.repeat(starts, counts)
        size = max(size, int(counts.max()))
    out = np.concatenate([codes, extra[:, None]], axis=1)
    assert n == 0 or len(np.unique(out, axis=0)) == n, "disambiguated codes are not unique"
    return out, size


# --------------------------------------------------------------------------- reports


def usage_stats(codes: np.ndarray, size: int) -> dict[str, float]:
    """Used codes and usage perplexity (exp of the entropy of code frequencies) of one level."""
    counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=size).astype(np.float64)
    p = counts[counts > 0] / max(counts.sum(), 1)
    perplexity = float(np.exp(-(p * np.log(p)).sum())) if p.size else 0.0
    return {
        "size": int(size),
        "used": int((counts > 0).sum()),
        "perplexity": round(perplexity, 3),
        "perplexity_ratio": round(perplexity / size, 4) if size else 0.0,
    }


def code_report(
    X: np.ndarray, codes_before_dedup: np.ndarray, codes_after: np.ndarray, level_sizes: list[int], quantizer: Quantizer
) -> dict[str, Any]:
    """How good the codes are.

    Returns a JSON-able dict:

    * ``collision_rate``: share of items whose L-code tuple is shared with another item
      (before disambiguation); ``collision_groups``: tuples shared by 2+ items;
      ``largest_group``: most items sharing one tuple;
    * ``max_items_per_prefix``: for prefix depth 1..L, the most items under one prefix;
    * ``levels``: per level (the extra level last) the used codes, usage perplexity and
      its ratio to the level's size (1.0 = perfectly uniform usage);
    * ``recon_mse`` (per element), ``recon_relative`` (sum ||x - x_hat||^2 / sum ||x||^2)
      of ``quantizer.decode``; ``unique``: every final ID is distinct.
    """
    X = check_vectors(X)
    before = np.asarray(codes_before_dedup, dtype=np.int64)
    after = np.asarray(codes_after, dtype=np.int64)
    n, L = before.shape
    group, counts = _group_ids(before)
    shared = counts[group] > 1
    max_prefix = {}
    for depth in range(1, L + 1):
        _, c = _group_ids(before[:, :depth])
        max_prefix[str(depth)] = int(c.max())
    X_hat = quantizer.decode(before)
    err = ((X.astype(np.float64) - X_hat) ** 2).sum(1)
    norm = (X.astype(np.float64) ** 2).sum(1)
    return {
        "n_items": int(n),
        "levels": [dict(level=i, **usage_stats(after[:, i], level_sizes[i])) for i in range(after.shape[1])],
        "collision_rate": round(float(shared.mean()), 4),
        "collision_groups": int((counts > 1).sum()),
        "largest_group": int(counts.max()),
        "max_items_per_prefix": max_prefix,
        "recon_mse": float(err.mean() / X.shape[1]),
        "recon_relative": float(err.sum() / max(norm.sum(), 1e-12)),
        "unique": bool(len(np.unique(after, axis=0)) == n),
    }


def plot_code_usage(codes: np.ndarray, level_sizes: list[int], path: str | os.PathLike) -> None:
    """PNG with one panel per level: code frequencies sorted from most to least used."""
    # the object API with an Agg canvas: no pyplot global state, no display needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    codes = np.asarray(codes, dtype=np.int64)
    n_levels = codes.shape[1]
    fig = Figure(figsize=(3.2 * n_levels, 2.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_levels, squeeze=False)[0]
    for level, ax in enumerate(axes):
        size = level_sizes[level]
        counts = np.sort(np.bincount(codes[:, level], minlength=size))[::-1]
        stats = usage_stats(codes[:, level], size)
        ax.bar(np.arange(size), counts, width=1.0, color="C0")
        ax.set_yscale("log" if counts.max() > 0 and counts.max() >= 20 * max(counts.mean(), 1) else "linear")
        name = chr(ord("a") + level)
        ax.set_title(f"level {name}: {stats['used']}/{size} used\nperplexity {stats['perplexity']:.0f}", fontsize=9)
        ax.set_xlabel("code (sorted by use)", fontsize=8)
        if level == 0:
            ax.set_ylabel("items", fontsize=8)
        ax.tick_params(labelsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------- tokenizer

_META = "sid_tokenizer.json"
_CODES = "codes.npy"


class SemanticIdTokenizer:
    """Item vectors -> unique semantic IDs (quantizer codes + disambiguation level).

    Args:
        quantizer_cfg: which quantizer and its settings (defaults: residual k-means 3 x 256).
        min_dedup_codes: least size of the disambiguation level.
        show_progress: progress bars while fitting (RQ-VAE).
        num_threads: CPU threads for the quantizer (``None``: library defaults); see
            :func:`genrec.tokenization.quantizers.cpu_threads`.

    Attributes (after :meth:`fit`):
        quantizer_: the fitted quantizer.
        codes_: int64 ``(n, L + 1)`` unique codes of the fitted items.
        level_sizes_: ``L + 1`` ints, codes per level (K ... K, extra-level size).
        report_: :func:`code_report` of the fit.
    """

    def __init__(
        self,
        quantizer_cfg: QuantizerConfig | None = None,
        min_dedup_codes: int = 8,
        show_progress: bool = True,
        num_threads: int | None = None,
    ):
        self.quantizer_cfg = quantizer_cfg if quantizer_cfg is not None else QuantizerConfig()
        self.min_dedup_codes = min_dedup_codes
        self.show_progress = show_progress
        self.num_threads = num_threads

    def fit(self, X: np.ndarray) -> "SemanticIdTokenizer":
        """Fit the quantizer on ``X`` (n, d), encode and disambiguate; returns self."""
        X = check_vectors(X)
        self.quantizer_ = build_quantizer(
            self.quantizer_cfg, show_progress=self.show_progress, num_threads=self.num_threads
        )
        raw = self.quantizer_.fit_encode(X)
        self.codes_, extra = disambiguate(raw, self.min_dedup_codes)
        self.level_sizes_ = [int(self.quantizer_.codebook_size)] * self.quantizer_.levels + [extra]
        self.report_ = code_report(X, raw, self.codes_, self.level_sizes_, self.quantizer_)
        return self

    @property
    def levels(self) -> int:
        """Quantizer levels L (IDs have L + 1 codes)."""
        return int(self.quantizer_.levels)

    def _check_fitted(self) -> None:
        if not hasattr(self, "quantizer_"):
            raise RuntimeError("SemanticIdTokenizer is not fitted; call fit(X) or load(folder)")

    def assign_new(self, X_new: np.ndarray, existing_codes: np.ndarray) -> np.ndarray:
        """Unique IDs ``(m, L + 1)`` for new items, without refitting.

        Each new item is encoded with the fitted quantizer. It takes the first free slot
        of the disambiguation level under its L codes; when all ``level_sizes_[-1]`` slots
        are taken, it tries the next-nearest last-level codes (by distance of its last
        residual) until one has a free slot. Never returns a row of ``existing_codes``
        or of another new item. Items are placed in row order.

        Raises:
            InputError: the vectors do not fit the quantizer, or every slot near an item
                is taken.
        """
        self._check_fitted()
        X_new = check_vectors(X_new, "new item vectors")
        L, slots = self.levels, self.level_sizes_[-1]
        existing = np.asarray(existing_codes, dtype=np.int64)
        if existing.size == 0:
            existing = existing.reshape(0, L + 1)
        if existing.ndim != 2 or existing.shape[1] != L + 1:
            raise InputError(
                f"existing codes have shape {existing.shape}, expected (n, {L + 1})",
                "pass the catalog's codes of this tokenizer's run",
            )
        taken: dict[tuple[int, ...], set[int]] = {}
        for row in existing.tolist():
            taken.setdefault(tuple(row[:L]), set()).add(row[L])
        codes = self.quantizer_.encode(X_new)
        _, ranked = self.quantizer_.rank_last_level(X_new)
        out = np.zeros((len(X_new), L + 1), dtype=np.int64)
        for i in range(len(X_new)):
            prefix = tuple(codes[i, : L - 1].tolist())
            # the encoded code first (exactly what encode() says), then the others by distance
            first = int(codes[i, L - 1])
            candidates = [first] + [int(c) for c in ranked[i] if c != first]
            for c in candidates:
                key = prefix + (c,)
                used = taken.setdefault(key, set())
                free = next((s for s in range(slots) if s not in used), None)
                if free is not None:
                    used.add(free)
                    out[i, :L] = key
                    out[i, L] = free
                    break
            else:
                raise InputError(
                    f"no free semantic ID for new item {i}: all {len(candidates) * slots} IDs "
                    f"under its prefix {prefix} are taken",
                    "re-run `genrec tokenize` with a larger tokenize.min_dedup_codes",
                )
        return out

    # -- persistence

    def save(self, folder: str | os.PathLike) -> None:
        """Write the quantizer, codes, level sizes and report into ``folder``."""
        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        qfile = quantizer_file(self.quantizer_cfg.method)
        self.quantizer_.save(folder / qfile)
        np.save(folder / _CODES, self.codes_)
        meta = {
            "quantizer_cfg": dataclasses.asdict(self.quantizer_cfg),
            "quantizer_file": qfile,
            "min_dedup_codes": self.min_dedup_codes,
            "level_sizes": self.level_sizes_,
            "report": self.report_,
        }
        (folder / _META).write_text(json.dumps(meta, indent=2, default=float) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "SemanticIdTokenizer":
        """Read a tokenizer written by :meth:`save`."""
        folder = Path(folder)
        if not (folder / _META).is_file():
            raise InputError(f"{folder} holds no semantic-ID tokenizer ({_META} missing)", "re-run `genrec tokenize`")
        meta = json.loads((folder / _META).read_text())
        cfg = from_dict(QuantizerConfig, meta["quantizer_cfg"], source=str(folder / _META))
        tok = cls(cfg, meta["min_dedup_codes"], show_progress=False)
        tok.quantizer_ = load_quantizer(folder / meta["quantizer_file"])
        tok.codes_ = np.load(folder / _CODES)
        tok.level_sizes_ = [int(s) for s in meta["level_sizes"]]
        tok.report_ = meta["report"]
        return tok
