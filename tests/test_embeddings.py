"""Item texts, text embeddings (real MiniLM) and collaborative embeddings (real sequences)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genrec.errors import GenrecError
from genrec.tokenization import embeddings as emb
from genrec.tokenization.embeddings import (
    collaborative_embeddings,
    combine,
    empty_texts,
    item_texts,
    resolve_sentence_model,
    text_embeddings,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCI = DATA / "amazon-scientific-2018"
N_ITEMS = 300


def _scientific_items(n: int = N_ITEMS) -> pd.DataFrame:
    path = SCI / "Scientific.item.json"
    if not path.is_file():
        pytest.skip(f"{path} not present (the shared datasets live beside the repository)")
    raw = json.loads(path.read_text())
    rows = [dict(item_id=k, **v) for k, v in list(raw.items())[:n]]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def sci_items() -> pd.DataFrame:
    return _scientific_items()


@pytest.fixture(scope="module")
def sci_vectors(sci_items: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    # persistent cache under the repo's ignored .cache: later runs skip the encoder
    texts = item_texts(sci_items, "{title}. Categories: {categories}")
    return texts, text_embeddings(texts, cache_dir=REPO / ".cache" / "test-embeddings", show_progress=False)


# --------------------------------------------------------------------------- item texts


def test_item_texts_formats_fills_missing_and_collapses_whitespace():
    items = pd.DataFrame(
        {
            "title": ["A  camera\n lens", None, float("nan"), "x"],
            "brand": ["Acme", "Bolt", None, None],
            "tags": [["a", "b"], [], None, "t"],
        }
    )
    texts = item_texts(items, "{title}. Brand: {brand} ({tags})")
    assert texts[0] == "A camera lens. Brand: Acme (a, b)"
    assert texts[1] == ". Brand: Bolt ()"
    assert texts[2] == ""  # every field empty: no text at all, not the template's literals
    assert texts[3] == "x. Brand: (t)"
    assert empty_texts(texts).tolist() == [False, False, True, False]


def test_item_texts_unknown_field_names_field_and_choices():
    items = pd.DataFrame({"title": ["a"], "genres": ["b"]})
    with pytest.raises(GenrecError) as e:
        item_texts(items, "{title} {genre}")
    assert "genre" in e.value.problem and "title, genres" in e.value.fix
    with pytest.raises(GenrecError):
        item_texts(items, "{} {title}")


def test_resolve_sentence_model():
    path = Path(resolve_sentence_model("minilm"))
    assert (path / "modules.json").is_file()
    with pytest.raises(GenrecError) as e:
        resolve_sentence_model("/nonexistent/model/folder")
    assert "minilm" in e.value.fix


# --------------------------------------------------------------------------- text embeddings


def test_text_embeddings_shape_norm_and_semantics(sci_items, sci_vectors):
    texts, X = sci_vectors
    assert X.shape == (len(sci_items), 384) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-4)
    # items of the same leaf category are closer than items of different categories
    leaf = sci_items["categories"].fillna("").str.split(",").str[-1].to_numpy()
    S = X @ X.T
    same = (leaf[:, None] == leaf[None, :]) & ~np.eye(len(X), dtype=bool)
    diff = leaf[:, None] != leaf[None, :]
    assert same.sum() > 50
    assert S[same].mean() > S[diff].mean() + 0.1


def test_text_embeddings_cache_hit_skips_model(tmp_path, monkeypatch):
    texts = [
        "stainless steel staples for a staple gun",
        "heavy duty staples, 1000 count",
        "nitrile examination gloves, powder free",
        "",
    ]
    loads = []
    real = emb._load_sentence_model
    monkeypatch.setattr(emb, "_load_sentence_model", lambda p: loads.append(p) or real(p))
    X = text_embeddings(texts, cache_dir=tmp_path, show_progress=False)
    assert len(loads) == 1 and len(list(tmp_path.glob("*.npy"))) == 1
    # similar texts are closer than unrelated ones
    assert X[0] @ X[1] > X[0] @ X[2] + 0.2
    # the empty text still has a (unit) vector and is flagged
    assert np.isclose(np.linalg.norm(X[3]), 1.0, atol=1e-4) and empty_texts(texts).tolist() == [0, 0, 0, 1]

    def boom(path):
        raise AssertionError("model loaded again despite a cache hit")

    monkeypatch.setattr(emb, "_load_sentence_model", boom)
    np.testing.assert_array_equal(text_embeddings(texts, cache_dir=tmp_path, show_progress=False), X)
    # a different text list is a different key
    assert emb.embedding_cache_key(texts[:3], resolve_sentence_model("minilm")) != emb.embedding_cache_key(
        texts, resolve_sentence_model("minilm")
    )


# --------------------------------------------------------------------------- collaborative


def _sci_sequences() -> tuple[list[list[int]], int]:
    path = SCI / "Scientific.inter.json"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    seqs = list(json.loads(path.read_text()).values())
    train = [s[:-2] for s in seqs]  # leave-last-out: the last two are validation/test targets
    return train, 1 + max(max(s) for s in seqs)


def test_collaborative_embeddings_real_sequences():
    train, n_items = _sci_sequences()
    V = collaborative_embeddings(train, n_items, dim=32, window=3, seed=0)
    assert V.shape == (n_items, 32) and V.dtype == np.float32
    np.testing.assert_array_equal(V, collaborative_embeddings(train, n_items, dim=32, window=3, seed=0))
    norms = np.linalg.norm(V, axis=1)
    seen = np.zeros(n_items, bool)
    seen[[i for s in train for i in s]] = True
    assert np.allclose(norms[seen & (norms > 0)], 1, atol=1e-4)
    assert (norms[~seen] == 0).all()
    # neighbours in training sequences are closer than random pairs
    a = np.array([i for s in train for i in s[:-1]])
    b = np.array([j for s in train for j in s[1:]])
    keep = a != b
    pair_sim = (V[a[keep]] * V[b[keep]]).sum(1).mean()
    rng = np.random.default_rng(0)
    ra, rb = rng.choice(np.flatnonzero(seen), (2, 5000))
    rand_sim = (V[ra] * V[rb]).sum(1).mean()
    assert pair_sim > rand_sim + 0.2


def test_collaborative_embeddings_planted_groups():
    rng = np.random.default_rng(1)
    # items 0-19 and 20-39 are two worlds; item 40 never occurs
    seqs = [list(rng.integers(0, 20, 8)) for _ in range(200)] + [list(rng.integers(20, 40, 8)) for _ in range(200)]
    V = collaborative_embeddings(seqs, 41, dim=8, window=2, seed=3)
    S = V[:40] @ V[:40].T
    g = np.arange(40) < 20
    within = S[g[:, None] == g[None, :]].mean()
    across = S[g[:, None] != g[None, :]].mean()
    assert within > across + 0.5
    assert (V[40] == 0).all()


def test_combine_normalises_each_part_and_keeps_zero_rows():
    t = np.array([[3.0, 4.0], [1.0, 0.0]], np.float32)
    c = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    out = combine(t, c)
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out[0], [0.6, 0.8, 0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(out[1], [1, 0, 0, 0, 0])
    assert np.isfinite(out).all()


# --------------------------------------------------------------------------- the cache folder


def test_caches_live_in_one_user_folder_whatever_the_working_folder(tmp_path, monkeypatch):
    from genrec.config import DataConfig, load_config
    from genrec.data import load_raw, prepare
    from genrec.io import cache_dir
    from genrec.models import base_lm
    from genrec.tokenization import stage

    monkeypatch.delenv("GENREC_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir("embeddings") == tmp_path / "home" / ".cache" / "genrec" / "embeddings"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("models") == tmp_path / "xdg" / "genrec" / "models"
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "cache"))
    assert cache_dir("models") == tmp_path / "cache" / "models"

    # the base model (SmolLM2, converted once) is looked up there, not under the working folder
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    smol = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    smol.mkdir(parents=True)
    (smol / "config.json").write_text("{}")
    (smol / "tokenizer_config.json").write_text("{}")
    assert base_lm.resolve_model("smollm2") == smol

    # and so are the tokenize stage's text embeddings, unless tokenize.embedding.cache_dir says otherwise
    inter = tmp_path / "inter.csv"
    inter.write_text("user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\n")
    data_cfg = DataConfig(format="table", path=str(inter), kcore=0)
    dataset = prepare(load_raw(data_cfg), data_cfg)
    used = []

    def fake_text_embeddings(texts, **kw):
        used.append(kw["cache_dir"])
        return np.ones((len(texts), 4), np.float32)

    monkeypatch.setattr(stage, "text_embeddings", fake_text_embeddings)
    config = tmp_path / "c.yaml"
    config.write_text("run_dir: runs/x\n")
    stage.item_vectors(dataset, load_config(config), ["a", "b", "c"])
    stage.item_vectors(dataset, load_config(config, ["tokenize.embedding.cache_dir=mine"]), ["a", "b", "c"])
    assert used == [tmp_path / "cache" / "embeddings", tmp_path / "mine"]
    assert not (work / ".cache").exists()
