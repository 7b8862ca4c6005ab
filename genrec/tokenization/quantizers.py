"""Quantizers: item vectors -> hierarchical codes (one code per level).

Two estimators with the same scikit-learn-like API (``fit`` / ``encode`` /
``decode`` / ``save`` / ``load``), deterministic for a seed and free of global state:

* :class:`ResidualKMeans`: k-means on the vectors, then k-means on what the first
  level left unexplained (the residuals), and so on (faiss k-means);
* :class:`RQVAE`: TIGER's residual-quantized VAE (Rajput et al., 2023), an MLP
  autoencoder whose latent is quantized by residual codebooks (PyTorch).

:func:`build_quantizer` makes one from a :class:`~genrec.config.QuantizerConfig`;
:func:`load_quantizer` reads either back from its file.
"""

from __future__ import annotations

import abc
import contextlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from genrec.config import QuantizerConfig
from genrec.errors import InputError
from genrec.io import atomic_write_bytes

#: Valid ``tokenize.quantizer.method`` values.
METHODS = ("rkmeans", "rqvae")

# Rows per chunk when assigning/subtracting residuals, so that 1M x 384 inputs do not
# materialise another full-size temporary per level.
_CHUNK = 65536


# --------------------------------------------------------------------------- helpers


def check_vectors(X: Any, name: str = "X") -> np.ndarray:
    """``X`` as a C-contiguous float32 ``(n, d)`` array with finite values."""
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise InputError(
            f"{name} must be a non-empty 2-D array of item vectors, got shape {X.shape}",
            "check the embedding stage output",
        )
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise InputError(
            f"{bad} item vectors contain NaN or infinite values",
            "check the embedding stage (re-run it with a fresh cache)",
        )
    return X


def count_distinct(X: np.ndarray, at_least: int | None = None) -> int:
    """Number of distinct rows of ``X``.

    With ``at_least``, returns early once a cheap random projection already shows that
    many distinct rows (distinct projections imply distinct rows), which avoids sorting
    1M x 384 rows when the answer is obvious.
    """
    if at_least is not None:
        r = np.random.default_rng(12345).standard_normal(X.shape[1])
        # chunked float64 products: no full-size float64 copy of X (3 GB at 1M x 384);
        # an elementwise product + row sum treats equal rows identically wherever they sit
        proj = np.concatenate([(X[s : s + 16384].astype(np.float64) * r).sum(1) for s in range(0, len(X), 16384)])
        n_proj = np.unique(proj).size
        if n_proj >= at_least:
            return n_proj
    rows = np.ascontiguousarray(X).view(np.dtype((np.void, X.dtype.itemsize * X.shape[1])))
    return int(np.unique(rows).size)


def check_codebook_size(X: np.ndarray, codebook_size: int) -> None:
    """Raise InputError when there are fewer distinct vectors than codes per level."""
    n = X.shape[0]
    if codebook_size < 1:
        raise InputError(
            f"codebook size must be >= 1, got {codebook_size}",
            "set tokenize.quantizer.codebook_size to a positive number",
        )
    if codebook_size > n:
        raise InputError(
            f"codebook size {codebook_size} is larger than the catalog ({n} items)",
            f"set tokenize.quantizer.codebook_size to at most {n} (a few times smaller "
            "works better, e.g. about sqrt of the catalog size per level)",
        )
    distinct = count_distinct(X, at_least=codebook_size)
    if codebook_size > distinct:
        raise InputError(
            f"codebook size {codebook_size} is larger than the catalog ({n} items, only {distinct} distinct vectors)",
            f"set tokenize.quantizer.codebook_size to at most {distinct}, or give the "
            "items distinct text (many items have identical vectors)",
        )


def _nearest(X: np.ndarray, C: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances and indices of the ``k`` nearest rows of ``C`` for each row of ``X``."""
    import faiss

    index = faiss.IndexFlatL2(C.shape[1])
    index.add(np.ascontiguousarray(C, dtype=np.float32))
    D, I = index.search(np.ascontiguousarray(X, dtype=np.float32), k)
    return D, I.astype(np.int64)


#: k-means initialisations (``ResidualKMeans(init=...)``)
KMEANS_INITS = ("random", "kmeans++")
#: how residual levels are clustered (``ResidualKMeans(residual=...)``)
RESIDUAL_MODES = ("l2", "direction")


def _unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return (X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _kmeans(
    X: np.ndarray,
    k: int,
    n_iter: int,
    seed: int,
    max_points_per_centroid: int,
    init: str = "random",
    spherical: bool = False,
) -> np.ndarray:
    """faiss k-means centroids ``(k, d)``; deterministic for ``seed`` (checked in the tests).

    faiss trains on a random subsample of ``max_points_per_centroid * k`` rows when
    there are more (drawn with ``seed``); empty clusters are split from large ones.
    ``spherical`` renormalises centroids to unit length after each iteration.
    """
    import faiss

    if init not in KMEANS_INITS:
        raise InputError(f"unknown k-means init {init!r}", f"use one of {', '.join(KMEANS_INITS)}")
    method = {"kmeans++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS, "random": faiss.ClusteringInitMethod_RANDOM}[
        init
    ]
    km = faiss.Kmeans(
        X.shape[1],
        k,
        niter=n_iter,
        seed=seed,
        verbose=False,
        max_points_per_centroid=max_points_per_centroid,
        # below 39 points per centroid faiss only warns; small catalogs are normal here
        min_points_per_centroid=1,
        init_method=method,
        spherical=spherical,
    )
    km.train(X)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


@contextlib.contextmanager
def cpu_threads(n: int | None, torch_too: bool = True) -> Iterator[None]:
    """Run the block with ``n`` faiss (and torch) CPU threads, then restore the previous counts.

    ``None`` leaves the libraries' settings alone; ``torch_too=False`` does not import
    torch (residual k-means does not need it). Why this exists: on a small machine
    whose cores are busy with other work, two OpenMP threads that spin-wait on each
    other made RQ-VAE steps 20x and k-means several times slower than one thread.
    """
    if n is None:
        yield
        return
    import faiss

    before_faiss = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(n))
    before_torch = None
    if torch_too:
        import torch

        before_torch = torch.get_num_threads()
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before_faiss)
        if before_torch is not None:
            import torch

            torch.set_num_threads(before_torch)


# --------------------------------------------------------------------------- base


class Quantizer(abc.ABC):
    """Common API of the quantizers.

    Attributes:
        levels: number of code levels L.
        codebook_size: codes per level K.
    """

    levels: int
    codebook_size: int
    #: file suffix written by :meth:`save`
    suffix: str = ""

    @abc.abstractmethod
    def fit(self, X: np.ndarray) -> "Quantizer":
        """Learn the codebooks from item vectors ``X`` (n, d); returns self."""

    @abc.abstractmethod
    def encode(self, X: np.ndarray) -> np.ndarray:
        """Codes of ``X``: int64 ``(n, levels)``, each in ``[0, codebook_size)``."""

    def fit_encode(self, X: np.ndarray) -> np.ndarray:
        """``fit(X)`` then ``encode(X)``; subclasses may reuse work done while fitting."""
        return self.fit(X).encode(X)

    @abc.abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstruction of the input vectors from codes: float32 ``(n, d)``."""

    @abc.abstractmethod
    def rank_last_level(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For placing new items: the first L-1 codes ``(n, L-1)`` and every last-level code
        ranked nearest first ``(n, K)`` (by distance of the last residual)."""

    @abc.abstractmethod
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted quantizer to one file."""

    @classmethod
    @abc.abstractmethod
    def load(cls, path: str | os.PathLike) -> "Quantizer":
        """Read a quantizer written by :meth:`save`."""

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (scikit-learn style)."""
        return {k: getattr(self, k) for k in self._param_names}

    _param_names: tuple[str, ...] = ()

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(X) first")

    def _check_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] < self.levels:
            raise ValueError(f"codes must be (n, >= {self.levels}), got {codes.shape}")
        codes = codes[:, : self.levels]  # a disambiguation level, if present, is not a codebook
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must be in [0, {self.codebook_size})")
        return codes


# --------------------------------------------------------------------------- residual k-means


class ResidualKMeans(Quantizer):
    """Residual k-means: level ``l`` clusters what levels ``0..l-1`` left unexplained.

    Each level's codebook is fitted with faiss k-means on the current residuals; an
    item's code is its nearest centroid, and the centroid is subtracted before the
    next level. ``decode`` sums the items' centroids.

    Args:
        levels: number of levels L.
        codebook_size: centroids per level K.
        n_iter: k-means iterations per level.
        seed: seed of each level's k-means (level ``l`` uses ``seed + l``).
        max_points_per_centroid: faiss subsamples ``max_points_per_centroid * K`` rows to
            train each level when there are more (256 * 256 = 65,536 rows by default);
            every row is still assigned. Lower is faster and rougher.
        num_threads: CPU threads for faiss while fitting/encoding (``None``: faiss's
            default); see :func:`cpu_threads`.
        init: ``"random"`` (faiss's default: random rows) or ``"kmeans++"``. Neither is
            better across catalogs (measured over 3 seeds on 3 datasets).
        pca_dim: project the (centred) vectors onto their top ``pca_dim`` principal
            components before quantizing (0: off). Why: in 384 dimensions a few thousand
            residuals look isotropic to k-means; in 32 they keep their structure. With
            ``residual="direction"`` it cut collisions from 4.6% to 3.9% (MovieTweetings),
            26% to 19% (Scientific) and 8.2% to 4.8% (Beauty, text+collab), seed 0.
            ``decode`` maps back to the input space.
        residual: how levels 2..L cluster residuals. ``"l2"`` (plain k-means, the
            default) or ``"direction"``: spherical k-means on the residuals' directions
            (an item goes to the centroid of most similar direction), each code's vector
            being the mean residual of its items. Why: text-embedding residuals are
            nearly isotropic, so under L2 the one centroid that averages many of them
            sits near 0 and takes most items while the other codes sit on outliers
            (seen: level-3 usage perplexity 1.4 of 64). Over 3 seeds, ``direction``
            cut collisions from 37% to 5% (MovieTweetings, 2,414 items, 3 x 64) and 32%
            to 23% (Scientific, 4,344 items, 3 x 256) with lower residual error, while on
            Beauty (3,106 distinct texts for 12,101 items) collisions stayed ~88% and the
            error rose (0.035 -> 0.045).

    Attributes:
        codebooks_: list of L float32 arrays ``(K, d)`` (what ``decode`` adds up).
        directions_: list of L unit ``(K, d)`` arrays used to assign levels 2..L when
            ``residual="direction"`` (``None`` for L2-assigned levels).
        labels_: int64 ``(n, L)`` codes of the training vectors (what ``encode`` gives them).
        inertia_: mean squared residual norm after each level (list of L floats).
    """

    suffix = ".npz"
    _param_names = (
        "levels",
        "codebook_size",
        "n_iter",
        "seed",
        "max_points_per_centroid",
        "num_threads",
        "init",
        "residual",
        "pca_dim",
    )

    def __init__(
        self,
        levels: int = 3,
        codebook_size: int = 256,
        n_iter: int = 25,
        seed: int = 0,
        max_points_per_centroid: int = 256,
        num_threads: int | None = None,
        init: str = "random",
        residual: str = "l2",
        pca_dim: int = 0,
    ):
        self.levels = levels
        self.codebook_size = codebook_size
        self.n_iter = n_iter
        self.seed = seed
        self.max_points_per_centroid = max_points_per_centroid
        self.num_threads = num_threads
        self.init = init
        self.residual = residual
        self.pca_dim = pca_dim

    def _project(self, X: np.ndarray) -> np.ndarray:
        """Input vectors in the space the codebooks live in (PCA-projected when enabled)."""
        if self.pca_components_ is None:
            return X
        return np.ascontiguousarray((X - self.pca_mean_) @ self.pca_components_.T, dtype=np.float32)

    def fit(self, X: np.ndarray) -> "ResidualKMeans":
        with cpu_threads(self.num_threads, torch_too=False):
            return self._fit(X)

    def _fit(self, X: np.ndarray) -> "ResidualKMeans":
        X = check_vectors(X)
        if self.levels < 1:
            raise InputError(f"levels must be >= 1, got {self.levels}", "set tokenize.quantizer.levels")
        if self.residual not in RESIDUAL_MODES:
            raise InputError(
                f"unknown residual clustering {self.residual!r}", f"use one of {', '.join(RESIDUAL_MODES)}"
            )
        check_codebook_size(X, self.codebook_size)
        K = self.codebook_size
        self.n_features_in_ = X.shape[1]
        self.pca_mean_ = self.pca_components_ = None
        if self.pca_dim and self.pca_dim < X.shape[1]:
            self.pca_mean_ = X.mean(0).astype(np.float32)
            # principal axes from the SVD of the centred data; signs fixed for determinism
            _, _, Vt = np.linalg.svd((X - self.pca_mean_).astype(np.float64), full_matrices=False)
            Vt = Vt[: self.pca_dim]
            Vt *= np.sign(Vt[np.arange(len(Vt)), np.abs(Vt).argmax(1)])[:, None]
            self.pca_components_ = np.ascontiguousarray(Vt, dtype=np.float32)
        R = self._project(X).copy()
        self.codebooks_: list[np.ndarray] = []
        self.directions_: list[np.ndarray | None] = []
        self.inertia_: list[float] = []
        self.labels_ = np.zeros((len(X), self.levels), dtype=np.int64)
        for level in range(self.levels):
            by_direction = self.residual == "direction" and level > 0
            train = R
            if by_direction:
                # normalise only the rows faiss would sample anyway (not a second copy of R)
                cap = self.max_points_per_centroid * K
                rows = (
                    np.sort(np.random.default_rng(self.seed + level).choice(len(R), cap, replace=False))
                    if len(R) > cap
                    else slice(None)
                )
                train = _unit_rows(R[rows])
            C = _kmeans(
                train,
                K,
                self.n_iter,
                self.seed + level,
                self.max_points_per_centroid,
                self.init,
                spherical=by_direction,
            )
            for s in range(0, len(R), _CHUNK):
                part = R[s : s + _CHUNK]
                self.labels_[s : s + _CHUNK, level] = _nearest(_unit_rows(part) if by_direction else part, C)[1][:, 0]
            I = self.labels_[:, level]
            if by_direction:
                # the code's vector is its items' mean residual: what best reconstructs them
                import scipy.sparse as sp

                member = sp.csr_matrix((np.ones(len(I), np.float32), (I, np.arange(len(I)))), shape=(K, len(I)))
                V = np.asarray(member @ R, dtype=np.float32)
                V /= np.maximum(np.bincount(I, minlength=K), 1)[:, None].astype(np.float32)
                self.directions_.append(C)
                C = np.ascontiguousarray(V)
            else:
                self.directions_.append(None)
            sq = 0.0
            for s in range(0, len(R), _CHUNK):
                part = R[s : s + _CHUNK]
                part -= C[I[s : s + _CHUNK]]  # in place: R holds the next level's input
                sq += float(np.einsum("ij,ij->", part, part, dtype=np.float64))
            self.codebooks_.append(C)
            self.inertia_.append(sq / len(R))
        self.fitted_ = True
        return self

    def _search(self, level: int, part: np.ndarray, k: int = 1) -> np.ndarray:
        """Nearest ``k`` codes of level ``level`` for residuals ``part`` (nearest first)."""
        D = self.directions_[level]
        if D is not None:
            return _nearest(_unit_rows(part), D, k)[1]
        return _nearest(part, self.codebooks_[level], k)[1]

    def _residual_codes(self, X: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
        """Codes of the first ``levels`` levels and the residual left after them.

        Works chunk by chunk through all levels, so memory grows by one chunk, not by a
        copy of ``X`` (the residuals returned are only kept for small inputs).
        """
        X = check_vectors(X)
        if X.shape[1] != self.n_features_in_:
            raise InputError(
                f"vectors have {X.shape[1]} dimensions, the quantizer was fitted on {self.n_features_in_}",
                "embed new items the same way as the catalog",
            )
        X = self._project(X)
        codes = np.zeros((len(X), levels), dtype=np.int64)
        keep = len(X) <= _CHUNK
        residual = np.zeros((0, X.shape[1]), dtype=np.float32)
        for s in range(0, len(X), _CHUNK):
            part = X[s : s + _CHUNK].copy()
            for level in range(levels):
                I = self._search(level, part)[:, 0]
                codes[s : s + _CHUNK, level] = I
                part -= self.codebooks_[level][I]
            if keep:
                residual = part
        return codes, residual

    def encode(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        with cpu_threads(self.num_threads, torch_too=False):
            return self._residual_codes(X, self.levels)[0]

    def fit_encode(self, X: np.ndarray) -> np.ndarray:
        # fitting already assigned every row at every level: no second pass over X
        return self.fit(X).labels_.copy()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._check_fitted()
        codes = self._check_codes(codes)
        out = np.zeros((len(codes), self.codebooks_[0].shape[1]), dtype=np.float32)
        for level, C in enumerate(self.codebooks_):
            out += C[codes[:, level]]
        if self.pca_components_ is not None:
            out = out @ self.pca_components_ + self.pca_mean_
        return out

    def rank_last_level(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        X = check_vectors(X)
        prefixes, ranks = [], []
        with cpu_threads(self.num_threads, torch_too=False):
            for s in range(0, len(X), _CHUNK):  # residuals are only returned chunk by chunk
                prefix, R = self._residual_codes(X[s : s + _CHUNK], self.levels - 1)
                prefixes.append(prefix)
                ranks.append(self._search(self.levels - 1, R, k=self.codebook_size))
        return np.concatenate(prefixes), np.concatenate(ranks)

    def save(self, path: str | os.PathLike) -> None:
        self._check_fitted()
        buf = io.BytesIO()
        directions = np.stack([np.zeros_like(c) if d is None else d for c, d in zip(self.codebooks_, self.directions_)])
        np.savez(
            buf,
            kind=np.array("rkmeans"),
            params=np.array(json.dumps(self.get_params())),
            n_features_in=np.array(self.n_features_in_),
            inertia=np.array(self.inertia_),
            codebooks=np.stack(self.codebooks_),
            directions=directions,
            by_direction=np.array([d is not None for d in self.directions_]),
            pca_components=np.zeros((0,)) if self.pca_components_ is None else self.pca_components_,
            pca_mean=np.zeros((0,)) if self.pca_mean_ is None else self.pca_mean_,
        )
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ResidualKMeans":
        with np.load(Path(path), allow_pickle=False) as z:
            if str(z["kind"]) != "rkmeans":
                raise InputError(f"{path} is not a residual k-means file", "pass the file written by save()")
            q = cls(**json.loads(str(z["params"])))
            q.codebooks_ = [np.ascontiguousarray(c) for c in z["codebooks"]]
            q.directions_ = [
                np.ascontiguousarray(d) if flag else None for d, flag in zip(z["directions"], z["by_direction"])
            ]
            q.n_features_in_ = int(z["n_features_in"])
            q.inertia_ = [float(v) for v in z["inertia"]]
            has_pca = "pca_components" in z.files and z["pca_components"].size > 0
            q.pca_components_ = np.ascontiguousarray(z["pca_components"]) if has_pca else None
            q.pca_mean_ = np.ascontiguousarray(z["pca_mean"]) if has_pca else None
        q.fitted_ = True
        return q


# --------------------------------------------------------------------------- RQ-VAE


def _mlp(dims: Sequence[int]):
    """Linear layers with ReLU between them (none after the last)."""
    import torch.nn as nn

    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _build_module(input_dim: int, hidden_dims: Sequence[int], latent_dim: int, levels: int, codebook_size: int):
    import torch
    import torch.nn as nn

    class RQVAEModule(nn.Module):
        """Encoder MLP, ``levels`` residual codebooks of ``codebook_size`` x ``latent_dim``, decoder MLP."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = _mlp([input_dim, *hidden_dims, latent_dim])
            self.decoder = _mlp([latent_dim, *reversed(list(hidden_dims)), input_dim])
            self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, latent_dim) * 0.1)

        def quantize(self, z: torch.Tensor, levels: int | None = None):
            """Residual quantization of ``z``.

            Returns (quantized sum, codes (n, levels), codebook loss, commitment loss,
            residuals entering each level). Codebook loss moves codes towards the
            (frozen) residuals, commitment loss moves the encoder towards the (frozen)
            codes (van den Oord et al., 2017).
            """
            levels = self.codebooks.shape[0] if levels is None else levels
            r = z
            zq = torch.zeros_like(z)
            codes, residuals = [], []
            cb_loss = z.new_zeros(())
            commit = z.new_zeros(())
            for level in range(levels):
                C = self.codebooks[level]
                rd = r.detach()
                dist = (rd * rd).sum(1, keepdim=True) - 2 * rd @ C.detach().T + (C.detach() ** 2).sum(1)
                idx = dist.argmin(1)
                e = C[idx]
                cb_loss = cb_loss + ((rd - e) ** 2).sum(1).mean()
                commit = commit + ((r - e.detach()) ** 2).sum(1).mean()
                residuals.append(rd)
                codes.append(idx)
                zq = zq + e.detach()
                r = r - e.detach()
            codes_t = torch.stack(codes, 1) if codes else torch.zeros(len(z), 0, dtype=torch.long)
            return zq, codes_t, cb_loss, commit, residuals

        def forward(self, x: torch.Tensor):
            z = self.encoder(x)
            zq, codes, cb_loss, commit, residuals = self.quantize(z)
            # straight-through estimator: the decoder sees zq, gradients flow to z
            x_hat = self.decoder(z + (zq - z).detach())
            return x_hat, codes, cb_loss, commit, residuals

    return RQVAEModule()


class RQVAE(Quantizer):
    """TIGER-style RQ-VAE: MLP encoder -> residual codebooks -> MLP decoder.

    Loss per batch: reconstruction (squared error summed over features, averaged over
    items) + codebook loss + ``beta`` * commitment loss, with a straight-through
    estimator. Codebooks start from residual k-means of the initial encoder outputs;
    codes unused during an epoch are re-seeded to random current residuals (dead-code
    revival). Deterministic for ``seed`` on CPU (fixed init, a ``torch.Generator`` for
    shuffling and revival, no dropout); the caller's global torch RNG is left untouched.

    Args:
        hidden_dims: encoder MLP widths; the decoder mirrors them.
        latent_dim: latent (codebook vector) dimension.
        levels: number of codebooks L.
        codebook_size: codes per codebook K.
        epochs: passes over the items.
        batch_size: items per step.
        lr: Adam(W) learning rate.
        beta: commitment loss weight.
        seed: seed of initialisation, k-means init, shuffling and revival.
        weight_decay: AdamW weight decay.
        kmeans_init: initialise codebooks by residual k-means of the initial latents.
        kmeans_iters: k-means iterations for that initialisation.
        revive_dead: re-seed codes unused over an epoch.
        show_progress: tqdm bar over epochs with the loss.
        device: torch device (``"cpu"``; on ``"cuda"`` results are not bit-reproducible).
        num_threads: CPU threads for torch/faiss during fit/encode/decode (``None``: the
            libraries' defaults). 1 is as fast as 2 on an idle 2-core machine here and
            20x faster when another process keeps a core busy; see :func:`cpu_threads`.

    Attributes:
        history_: per-epoch dicts with ``loss``, ``recon``, ``codebook``, ``commit``,
            ``used`` (codes used per level during the epoch), ``revived`` and ``seconds``
            (since the start of ``fit``, k-means initialisation included).
        module_: the trained torch module.
    """

    suffix = ".pt"
    _param_names = (
        "hidden_dims",
        "latent_dim",
        "levels",
        "codebook_size",
        "epochs",
        "batch_size",
        "lr",
        "beta",
        "seed",
        "weight_decay",
        "kmeans_init",
        "kmeans_iters",
        "revive_dead",
        "show_progress",
        "device",
        "num_threads",
    )

    def __init__(
        self,
        hidden_dims: Sequence[int] = (512, 256, 128),
        latent_dim: int = 32,
        levels: int = 3,
        codebook_size: int = 256,
        epochs: int = 200,
        batch_size: int = 1024,
        lr: float = 1e-3,
        beta: float = 0.25,
        seed: int = 0,
        weight_decay: float = 0.0,
        kmeans_init: bool = True,
        kmeans_iters: int = 25,
        revive_dead: bool = True,
        show_progress: bool = True,
        device: str = "cpu",
        num_threads: int | None = None,
    ):
        self.hidden_dims = [int(h) for h in hidden_dims]
        self.latent_dim = latent_dim
        self.levels = levels
        self.codebook_size = codebook_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.beta = beta
        self.seed = seed
        self.weight_decay = weight_decay
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.revive_dead = revive_dead
        self.show_progress = show_progress
        self.device = device
        self.num_threads = num_threads

    # -- fitting

    def fit(self, X: np.ndarray) -> "RQVAE":
        with cpu_threads(self.num_threads):
            return self._fit(X)

    def _fit(self, X: np.ndarray) -> "RQVAE":
        import torch
        from tqdm.auto import tqdm

        X = check_vectors(X)
        if self.levels < 1 or self.epochs < 0 or self.batch_size < 1:
            raise InputError(
                "rqvae needs levels >= 1, epochs >= 0 and batch_size >= 1",
                "fix tokenize.quantizer.levels / epochs / batch_size",
            )
        check_codebook_size(X, self.codebook_size)
        n, d = X.shape
        t_start = time.perf_counter()
        dev = torch.device(self.device)
        # fork_rng: seed the init without changing the caller's global RNG stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            module = _build_module(d, self.hidden_dims, self.latent_dim, self.levels, self.codebook_size)
        module.to(dev)
        Xt = torch.from_numpy(X).to(dev)
        if self.kmeans_init:
            with torch.no_grad():
                Z = torch.cat([module.encoder(Xt[s : s + 8192]) for s in range(0, n, 8192)]).cpu().numpy()
            if count_distinct(Z, at_least=self.codebook_size) >= self.codebook_size:
                rk = ResidualKMeans(
                    self.levels, self.codebook_size, self.kmeans_iters, self.seed, num_threads=self.num_threads
                ).fit(Z)
                with torch.no_grad():
                    module.codebooks.copy_(torch.from_numpy(np.stack(rk.codebooks_)))
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.history_: list[dict[str, Any]] = []
        bar = tqdm(range(self.epochs), desc="rq-vae", unit="epoch", disable=not self.show_progress, leave=False)
        K = self.codebook_size
        for epoch in bar:
            module.train()
            perm = torch.randperm(n, generator=gen).to(dev)
            usage = torch.zeros(self.levels, K, dtype=torch.long, device=dev)
            sums = np.zeros(4)
            for s in range(0, n, self.batch_size):
                x = Xt[perm[s : s + self.batch_size]]
                x_hat, codes, cb_loss, commit, _ = module(x)
                recon = ((x_hat - x) ** 2).sum(1).mean()
                loss = recon + cb_loss + self.beta * commit
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for level in range(self.levels):
                    usage[level] += torch.bincount(codes[:, level], minlength=K)
                w = len(x) / n
                sums += w * np.array([loss.item(), recon.item(), cb_loss.item(), commit.item()])
            used = (usage > 0).sum(1).tolist()
            revived = 0
            # no revival after the last epoch: a re-seeded code would be untrained
            if self.revive_dead and epoch < self.epochs - 1:
                revived = self._revive(module, Xt, usage, gen)
            self.history_.append(
                {
                    "loss": float(sums[0]),
                    "recon": float(sums[1]),
                    "codebook": float(sums[2]),
                    "commit": float(sums[3]),
                    "used": used,
                    "revived": revived,
                    "seconds": round(time.perf_counter() - t_start, 2),
                }
            )
            bar.set_postfix(loss=f"{sums[0]:.4f}", recon=f"{sums[1]:.4f}", used="/".join(map(str, used)))
        bar.close()
        module.eval()
        self.module_ = module
        self.n_features_in_ = d
        self.fitted_ = True
        return self

    def _revive(self, module, Xt, usage, gen) -> int:
        """Re-seed codes unused this epoch to residuals of random items (without replacement)."""
        import torch

        dead = usage == 0
        if not bool(dead.any()):
            return 0
        n = len(Xt)
        sample = torch.randperm(n, generator=gen)[: max(self.batch_size, self.codebook_size)].to(Xt.device)
        with torch.no_grad():
            _, _, _, _, residuals = module.quantize(module.encoder(Xt[sample]))
            for level in range(self.levels):
                idx = dead[level].nonzero().ravel()
                if len(idx) == 0:
                    continue
                pool = residuals[level]
                pick = torch.randperm(len(pool), generator=gen)[: len(idx)].to(pool.device)
                if len(pick) < len(idx):  # more dead codes than sampled residuals
                    pick = torch.randint(len(pool), (len(idx),), generator=gen).to(pool.device)
                module.codebooks[level, idx] = pool[pick]
        return int(dead.sum())

    # -- inference

    def _latent_codes(self, X: np.ndarray, levels: int):
        import torch

        self._check_fitted()
        X = check_vectors(X)
        if X.shape[1] != self.n_features_in_:
            raise InputError(
                f"vectors have {X.shape[1]} dimensions, the quantizer was fitted on {self.n_features_in_}",
                "embed new items the same way as the catalog",
            )
        codes, resid = [], []
        with torch.no_grad(), cpu_threads(self.num_threads):
            for s in range(0, len(X), 8192):
                x = torch.from_numpy(X[s : s + 8192]).to(self.device)
                z = self.module_.encoder(x)
                zq, c, _, _, _ = self.module_.quantize(z, levels)
                codes.append(c.cpu())
                resid.append((z - zq).cpu())
        return torch.cat(codes).numpy().astype(np.int64), torch.cat(resid).numpy()

    def encode(self, X: np.ndarray) -> np.ndarray:
        return self._latent_codes(X, self.levels)[0]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        import torch

        self._check_fitted()
        codes = self._check_codes(codes)
        out = []
        with torch.no_grad(), cpu_threads(self.num_threads):
            cb = self.module_.codebooks
            for s in range(0, len(codes), 8192):
                c = torch.from_numpy(codes[s : s + 8192]).to(cb.device)
                zq = sum(cb[level][c[:, level]] for level in range(self.levels))
                out.append(self.module_.decoder(zq).cpu())
        return torch.cat(out).numpy().astype(np.float32)

    def rank_last_level(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prefix, R = self._latent_codes(X, self.levels - 1)
        C = self.module_.codebooks[-1].detach().cpu().numpy()
        _, ranked = _nearest(np.ascontiguousarray(R, dtype=np.float32), C, k=self.codebook_size)
        return prefix, ranked

    # -- persistence

    def save(self, path: str | os.PathLike) -> None:
        import torch

        self._check_fitted()
        state = {
            "kind": "rqvae",
            "params": json.dumps(self.get_params()),
            "n_features_in": self.n_features_in_,
            "history": json.dumps(self.history_, default=float),
            "state_dict": {k: v.detach().cpu() for k, v in self.module_.state_dict().items()},
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RQVAE":
        import torch

        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        if state.get("kind") != "rqvae":
            raise InputError(f"{path} is not an RQ-VAE file", "pass the file written by save()")
        q = cls(**json.loads(state["params"]))
        q.n_features_in_ = int(state["n_features_in"])
        q.history_ = json.loads(state["history"])
        module = _build_module(q.n_features_in_, q.hidden_dims, q.latent_dim, q.levels, q.codebook_size)
        module.load_state_dict(state["state_dict"])
        module.to(q.device).eval()
        q.module_ = module
        q.fitted_ = True
        return q


# --------------------------------------------------------------------------- factory


def build_quantizer(cfg: QuantizerConfig, show_progress: bool = True, num_threads: int | None = None) -> Quantizer:
    """The (unfitted) quantizer that ``cfg`` describes.

    ``show_progress`` and ``num_threads`` are run-time settings, not part of the config.
    """
    if cfg.method == "rkmeans":
        return ResidualKMeans(
            levels=cfg.levels,
            codebook_size=cfg.codebook_size,
            n_iter=cfg.kmeans_iters,
            seed=cfg.seed,
            num_threads=num_threads if num_threads is not None else cfg.num_threads,
            residual=cfg.residual,
            pca_dim=cfg.pca_dim,
        )
    if cfg.method == "rqvae":
        return RQVAE(
            hidden_dims=cfg.hidden_dims,
            latent_dim=cfg.latent_dim,
            levels=cfg.levels,
            codebook_size=cfg.codebook_size,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            beta=cfg.beta,
            seed=cfg.seed,
            kmeans_iters=cfg.kmeans_iters,
            show_progress=show_progress,
            num_threads=num_threads if num_threads is not None else cfg.num_threads,
        )
    raise InputError(f"unknown tokenize.quantizer.method {cfg.method!r}", f"valid methods: {', '.join(METHODS)}")


_CLASSES: dict[str, type[Quantizer]] = {"rkmeans": ResidualKMeans, "rqvae": RQVAE}


def quantizer_file(method: str) -> str:
    """File name :meth:`Quantizer.save` is given inside a tokenizer folder."""
    if method not in _CLASSES:
        raise InputError(f"unknown quantizer method {method!r}", f"valid methods: {', '.join(METHODS)}")
    return f"quantizer{_CLASSES[method].suffix}"


def load_quantizer(path: str | os.PathLike) -> Quantizer:
    """Read a quantizer file written by either class's ``save`` (chosen by suffix)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"quantizer file not found: {p}", "re-run `genrec tokenize`")
    for cls in _CLASSES.values():
        if p.suffix == cls.suffix:
            return cls.load(p)
    raise InputError(f"unknown quantizer file type {p.suffix!r} ({p})", "expected .npz or .pt")
