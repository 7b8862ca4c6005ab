"""Residual k-means, RQ-VAE, disambiguation, code reports and placing new items."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from genrec.config import QuantizerConfig
from genrec.errors import GenrecError
from genrec.tokenization.quantizers import RQVAE, ResidualKMeans, build_quantizer, cpu_threads, load_quantizer
from genrec.tokenization.semantic_ids import (
    SemanticIdTokenizer,
    code_report,
    disambiguate,
    plot_code_usage,
    usage_stats,
)

REPO = Path(__file__).resolve().parents[1]
SCI = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-scientific-2018"

# one thread: on a shared 2-core machine two spin-waiting OpenMP threads are 20x slower
SMALL = dict(
    hidden_dims=[64, 32],
    latent_dim=8,
    levels=2,
    codebook_size=16,
    batch_size=128,
    lr=3e-3,
    show_progress=False,
    num_threads=1,
)


def clustered(n: int = 600, d: int = 32, k: int = 12, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``k`` random centres (a stand-in for text embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    X = centres[rng.integers(0, k, n)] + noise * rng.standard_normal((n, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def sci_vectors() -> np.ndarray:
    """MiniLM vectors of 400 real Scientific items (cached under .cache after the first run)."""
    path = SCI / "Scientific.item.json"
    if not path.is_file():
        pytest.skip(f"{path} not present (the shared datasets live beside the repository)")
    import pandas as pd

    from genrec.tokenization.embeddings import item_texts, text_embeddings

    raw = json.loads(path.read_text())
    items = pd.DataFrame(list(raw.values())[:400])
    texts = item_texts(items, "{title}. Categories: {categories}")
    return text_embeddings(texts, cache_dir=REPO / ".cache" / "test-embeddings", show_progress=False)


def recon_error(q, X: np.ndarray) -> float:
    return float(((X - q.decode(q.encode(X))) ** 2).sum(1).mean())


# --------------------------------------------------------------------------- residual k-means


def test_rkmeans_deterministic_for_seed_and_codes_in_range(sci_vectors):
    X = sci_vectors
    a = ResidualKMeans(levels=3, codebook_size=16, n_iter=10, seed=0, num_threads=1).fit(X)
    b = ResidualKMeans(levels=3, codebook_size=16, n_iter=10, seed=0, num_threads=1).fit(X)
    c = ResidualKMeans(levels=3, codebook_size=16, n_iter=10, seed=1, num_threads=1).fit(X)
    codes = a.encode(X)
    assert codes.shape == (len(X), 3) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 16
    np.testing.assert_array_equal(codes, b.encode(X))
    np.testing.assert_array_equal(codes, a.labels_)  # fit_encode's shortcut agrees with encode
    for ca, cb in zip(a.codebooks_, b.codebooks_):
        np.testing.assert_array_equal(ca, cb)
    assert (codes != c.encode(X)).any()
    assert [cb.shape for cb in a.codebooks_] == [(16, 384)] * 3
    assert a.decode(codes).shape == X.shape


def test_rkmeans_error_drops_with_levels(sci_vectors):
    errs = [
        recon_error(ResidualKMeans(levels=L, codebook_size=16, n_iter=10, num_threads=1).fit(sci_vectors), sci_vectors)
        for L in (1, 2, 3)
    ]
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] < 1.0  # better than predicting zero for unit vectors


def test_rkmeans_direction_residuals_keep_deep_levels_in_use(sci_vectors, tmp_path):
    X = sci_vectors
    kw = dict(levels=3, codebook_size=16, n_iter=10, seed=0, num_threads=1)
    l2 = ResidualKMeans(residual="l2", **kw).fit(X)
    dr = ResidualKMeans(residual="direction", **kw).fit(X)
    ppl = lambda q: [usage_stats(c, 16)["perplexity"] for c in q.labels_.T]
    coll = lambda q: 1 - len(np.unique(q.labels_, axis=0)) / len(X)
    # plain L2 lets one near-zero centroid take most residuals at the deep levels
    assert min(ppl(dr)[1:]) > 12 > max(ppl(l2)[1:])
    assert coll(dr) < coll(l2)
    assert recon_error(dr, X) <= 1.02 * recon_error(l2, X)
    np.testing.assert_array_equal(dr.encode(X), dr.labels_)
    np.testing.assert_array_equal(dr.encode(X), ResidualKMeans(residual="direction", **kw).fit(X).labels_)
    dr.save(tmp_path / "d.npz")
    back = load_quantizer(tmp_path / "d.npz")
    assert back.directions_[0] is None and back.directions_[1] is not None
    np.testing.assert_array_equal(back.encode(X), dr.labels_)
    with pytest.raises(GenrecError, match="residual"):
        ResidualKMeans(residual="cosine").fit(X)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ResidualKMeans(levels=3, codebook_size=8, n_iter=5, num_threads=1),
        lambda: ResidualKMeans(levels=3, codebook_size=8, n_iter=5, num_threads=1, residual="direction"),
        lambda: RQVAE(epochs=3, **dict(SMALL, levels=3, codebook_size=8)),
    ],
    ids=["l2", "direction", "rqvae"],
)
def test_rank_last_level_agrees_with_encode(make):
    X = clustered(n=300)
    q = make().fit(X)
    codes = q.encode(X)
    prefix, ranked = q.rank_last_level(X)
    np.testing.assert_array_equal(prefix, codes[:, :-1])
    assert ranked.shape == (300, 8)
    assert (np.sort(ranked, axis=1) == np.arange(8)).all()  # every code, once
    assert (ranked[:, 0] == codes[:, -1]).mean() > 0.99  # ties may order differently


def test_rkmeans_codebook_larger_than_catalog():
    X = clustered(n=50)
    with pytest.raises(GenrecError) as e:
        ResidualKMeans(codebook_size=64).fit(X)
    assert "larger than the catalog (50 items)" in e.value.problem
    assert "codebook_size to at most 50" in e.value.fix
    # enough rows but too few distinct vectors
    dup = np.repeat(X[:10], 10, axis=0)
    with pytest.raises(GenrecError, match="10 distinct"):
        ResidualKMeans(codebook_size=16).fit(dup)


def test_rkmeans_save_load(tmp_path):
    X = clustered()
    q = ResidualKMeans(levels=2, codebook_size=8, n_iter=5, num_threads=1).fit(X)
    q.save(tmp_path / "q.npz")
    r = load_quantizer(tmp_path / "q.npz")
    assert isinstance(r, ResidualKMeans) and r.get_params() == q.get_params()
    np.testing.assert_array_equal(r.encode(X), q.encode(X))


def test_cpu_threads_restores_settings():
    import faiss
    import torch

    before = (torch.get_num_threads(), faiss.omp_get_max_threads())
    with cpu_threads(1):
        assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == before


def test_build_quantizer_unknown_method():
    assert isinstance(build_quantizer(QuantizerConfig(method="rkmeans")), ResidualKMeans)
    assert isinstance(build_quantizer(QuantizerConfig(method="rqvae")), RQVAE)
    with pytest.raises(GenrecError) as e:
        build_quantizer(QuantizerConfig(method="pq"))
    assert "rkmeans" in e.value.fix and "rqvae" in e.value.fix


# --------------------------------------------------------------------------- disambiguation


def test_disambiguate_unique_and_order():
    codes = np.array([[1, 2], [0, 0], [1, 2], [3, 3], [1, 2], [0, 0]])
    out, size = disambiguate(codes, min_size=2)
    assert out.shape == (6, 3)
    assert out[:, 2].tolist() == [0, 0, 1, 0, 2, 1]  # row order inside each group
    assert len(np.unique(out, axis=0)) == 6
    np.testing.assert_array_equal(out[:, :2], codes)
    assert size == 3
    assert disambiguate(np.array([[0], [1]]), min_size=8)[1] == 8


# --------------------------------------------------------------------------- RQ-VAE


def test_rqvae_fits_deterministically_and_learns():
    X = clustered(n=500)
    a = RQVAE(epochs=25, seed=0, **SMALL).fit(X)
    b = RQVAE(epochs=25, seed=0, **SMALL).fit(X)
    codes = a.encode(X)
    assert codes.shape == (500, 2) and codes.min() >= 0 and codes.max() < 16
    np.testing.assert_array_equal(codes, b.encode(X))
    np.testing.assert_array_equal(a.decode(codes), b.decode(codes))
    recon = [h["recon"] for h in a.history_]
    assert recon[-1] < 0.5 * recon[0]
    assert a.decode(codes).shape == X.shape
    c = RQVAE(epochs=3, seed=1, **SMALL).fit(X)
    assert (c.encode(X) != RQVAE(epochs=3, seed=0, **SMALL).fit(X).encode(X)).any()


def test_rqvae_dead_code_revival_raises_usage():
    X = clustered(n=500, k=40)
    # random codebooks (no k-means init) leave many codes dead at first
    kw = dict(SMALL, kmeans_init=False, epochs=15, seed=0)
    off = RQVAE(revive_dead=False, **kw).fit(X)
    on = RQVAE(revive_dead=True, **kw).fit(X)
    used = lambda q: [len(np.unique(c)) for c in q.encode(X).T]
    assert sum(on.history_[-1]["used"]) > sum(off.history_[-1]["used"])
    assert sum(used(on)) > sum(used(off))
    assert sum(h["revived"] for h in on.history_) > 0
    assert all(h["revived"] == 0 for h in off.history_)


def test_rqvae_save_load(tmp_path):
    X = clustered(n=300)
    q = RQVAE(epochs=3, **SMALL).fit(X)
    q.save(tmp_path / "q.pt")
    r = load_quantizer(tmp_path / "q.pt")
    np.testing.assert_array_equal(r.encode(X), q.encode(X))
    np.testing.assert_allclose(r.decode(q.encode(X)), q.decode(q.encode(X)))


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_report_and_plot(tmp_path, sci_vectors):
    X = sci_vectors
    tok = SemanticIdTokenizer(
        QuantizerConfig(levels=2, codebook_size=8, kmeans_iters=10), min_dedup_codes=4, num_threads=1
    )
    tok.fit(X)
    assert tok.codes_.shape == (len(X), 3) and len(np.unique(tok.codes_, axis=0)) == len(X)
    assert tok.level_sizes_[:2] == [8, 8] and tok.level_sizes_[2] >= 4
    assert (tok.codes_ < np.array(tok.level_sizes_)).all()
    r = tok.report_
    assert 0 < r["collision_rate"] <= 1 and r["collision_groups"] >= 1  # 400 items in 64 cells must collide
    assert tok.level_sizes_[2] == max(4, r["largest_group"])
    assert r["max_items_per_prefix"]["1"] >= r["max_items_per_prefix"]["2"] == r["largest_group"]
    assert [lv["used"] for lv in r["levels"][:2]] == [8, 8]
    assert all(1 <= lv["perplexity"] <= lv["size"] + 1e-6 for lv in r["levels"])
    assert 0 < r["recon_relative"] < 1 and r["recon_mse"] > 0 and r["unique"]
    json.dumps(r)  # JSON-able for report.json
    # codes_report accepts any quantizer with decode
    again = code_report(X, tok.quantizer_.encode(X), tok.codes_, tok.level_sizes_, tok.quantizer_)
    assert again["collision_rate"] == r["collision_rate"]
    plot_code_usage(tok.codes_, tok.level_sizes_, tmp_path / "usage.png")
    assert (tmp_path / "usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("method", ["rkmeans", "rqvae"])
def test_assign_new_never_collides(tmp_path, method):
    X = clustered(n=400, k=10)
    cfg = QuantizerConfig(
        method=method,
        levels=2,
        codebook_size=8,
        kmeans_iters=10,
        epochs=5,
        batch_size=128,
        hidden_dims=[32],
        latent_dim=8,
    )
    tok = SemanticIdTokenizer(cfg, min_dedup_codes=4, show_progress=False, num_threads=1).fit(X)
    existing = tok.codes_
    slots = tok.level_sizes_[-1]
    # more copies of one item than its cell has slots: forces the next-nearest last-level codes
    target = 0
    copies = np.repeat(X[target : target + 1], slots + 6, axis=0)
    new = tok.assign_new(np.concatenate([copies, X[1:4]]), existing)
    assert new.shape == (len(copies) + 3, 3)
    allc = np.concatenate([existing, new])
    assert len(np.unique(allc, axis=0)) == len(allc)
    assert (new < np.array(tok.level_sizes_)).all() and (new >= 0).all()
    # the copies fill the free slots of the item's own cell first
    cell = existing[target, :2]
    in_cell = (new[: len(copies), :2] == cell).all(1)
    free = slots - int((existing[:, :2] == cell).all(1).sum())
    assert in_cell.sum() == free and in_cell[:free].all()
    # all copies keep the first-level code of the item
    assert (new[: len(copies), 0] == cell[0]).all()
    # deterministic, and the saved tokenizer places items identically
    np.testing.assert_array_equal(new, tok.assign_new(np.concatenate([copies, X[1:4]]), existing))
    tok.save(tmp_path / "sid")
    loaded = SemanticIdTokenizer.load(tmp_path / "sid")
    assert loaded.level_sizes_ == tok.level_sizes_ and dataclasses.asdict(loaded.quantizer_cfg) == dataclasses.asdict(
        cfg
    )
    np.testing.assert_array_equal(loaded.codes_, tok.codes_)
    np.testing.assert_array_equal(loaded.assign_new(np.concatenate([copies, X[1:4]]), existing), new)


def test_rkmeans_pca_fewer_collisions_and_round_trip(sci_vectors, tmp_path):
    def collision_rate(codes):
        _, inv, cnt = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
        return float((cnt[inv] > 1).mean())

    full = ResidualKMeans(3, 32, seed=0, residual="direction").fit(sci_vectors)
    pca = ResidualKMeans(3, 32, seed=0, residual="direction", pca_dim=16).fit(sci_vectors)
    assert pca.pca_components_.shape == (16, sci_vectors.shape[1])
    assert collision_rate(pca.labels_) <= collision_rate(full.labels_)
    # encode agrees with the fit, decode returns input-space vectors, save/load keeps both
    assert np.array_equal(pca.encode(sci_vectors), pca.labels_)
    assert pca.decode(pca.labels_).shape == sci_vectors.shape
    pca.save(tmp_path / "q.npz")
    back = ResidualKMeans.load(tmp_path / "q.npz")
    assert np.array_equal(back.encode(sci_vectors), pca.labels_)
    assert np.allclose(back.decode(pca.labels_), pca.decode(pca.labels_), atol=1e-6)
