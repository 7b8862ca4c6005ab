"""SASRec baseline: learns on the demo set, deterministic, exclusion, run_sasrec, save/load."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from conftest import copy_prepared
from genrec.data import PreparedDataset
from genrec.errors import GenrecError
from genrec.data import split_rows
from genrec.metrics import evaluate_rankings
from genrec.evaluation.baselines import run_sasrec
from genrec.models.sasrec import SASRecConfig, SASRecRecommender
from genrec.recommender import Recommender, ranked_indices

# small and short so the file runs in well under a minute on 2 cores; the higher lr makes
# up for the few steps
SMALL = dict(hidden=32, layers=1, max_len=20, batch_size=128, lr=5e-3, eval_users=200, num_threads=2)
TINY = dict(SMALL, max_len=10, epochs=1, eval_users=50)


@pytest.fixture(scope="module")
def dataset(demo_run: Path) -> PreparedDataset:
    return PreparedDataset.load(demo_run / "data")


@pytest.fixture(scope="module")
def fitted(dataset: PreparedDataset) -> SASRecRecommender:
    return SASRecRecommender(SASRecConfig(**SMALL, epochs=2)).fit(dataset, progress=False)


@pytest.fixture(scope="module")
def valid_rows(dataset: PreparedDataset):
    _, histories, targets = split_rows(dataset, "valid", 200, 0)
    return histories, targets


def test_learns_far_above_random(fitted, dataset, valid_rows):
    histories, targets = valid_rows
    assert isinstance(fitted, Recommender)
    ranked = ranked_indices(fitted.recommend(histories, k=10))
    assert all(len(r) == 10 and len(set(r)) == 10 for r in ranked)
    assert all(0 <= i < dataset.n_items for r in ranked for i in r)
    m = evaluate_rankings(ranked, targets, dataset.n_items)
    random_recall = 10 / dataset.n_items
    assert m["recall@10"] > 8 * random_recall, m
    assert m["invalid_rate"] == 0.0
    assert 1 <= fitted.best_epoch <= 2


def test_same_seed_same_recommendations(dataset, valid_rows):
    histories = valid_rows[0][:50]
    a = SASRecRecommender(SASRecConfig(**TINY)).fit(dataset, progress=False).recommend(histories)
    b = SASRecRecommender(SASRecConfig(**TINY)).fit(dataset, progress=False).recommend(histories)
    assert a == b


def test_exclude_seen(fitted, valid_rows):
    histories = valid_rows[0]
    ranked = ranked_indices(fitted.recommend(histories, k=10, exclude=histories))
    assert all(not set(r) & set(h) for r, h in zip(ranked, histories))
    assert all(len(r) == 10 for r in ranked)
    # also histories longer than max_len (exclusion uses the whole history) and an empty one
    long = [list(range(100)), []]
    out = ranked_indices(fitted.recommend(long, k=5, exclude=long))
    assert all(i >= 100 for i in out[0]) and len(out[1]) == 5


def test_save_load_round_trip(fitted, valid_rows, tmp_path):
    fitted.save(tmp_path / "m")
    again = SASRecRecommender.load(tmp_path / "m")
    assert again.recommend(valid_rows[0], k=10) == fitted.recommend(valid_rows[0], k=10)
    assert again.config == fitted.config and again.n_items == fitted.n_items
    # the learning curve travels with the model: one validation per epoch, minutes increasing
    assert [h["epoch"] for h in again.valid_history] == [1, 2]
    assert again.valid_history == fitted.valid_history
    assert 0 <= again.valid_history[0]["minutes"] <= again.valid_history[1]["minutes"]
    assert max(h["ndcg@10"] for h in again.valid_history) == pytest.approx(fitted.best_valid_ndcg, abs=1e-5)
    with pytest.raises(GenrecError):
        SASRecRecommender.load(tmp_path / "nothing")


def test_run_sasrec_writes_metrics(demo_run, tmp_path):
    run = copy_prepared(demo_run, tmp_path / "run")
    metrics = run_sasrec(run, SASRecConfig(**TINY), split="test", max_users=100, progress=False)
    path = run / "baselines" / "sasrec" / "metrics_test.json"
    saved = json.loads(path.read_text())
    for key in ("recall@10", "ndcg@10", "recall@5", "ndcg@5"):
        assert key in metrics and saved[key] == metrics[key]
    assert saved["users"] == 100 and saved["best_epoch"] == 1 and saved["config"]["hidden"] == 32
    assert "train_seconds" in saved
    assert (run / "baselines" / "sasrec" / "model.pt").is_file()
    with pytest.raises(GenrecError):
        run_sasrec(run, SASRecConfig(**TINY), split="train", progress=False)


def test_fit_says_how_long_it_will_take_and_shows_batches(dataset, caplog, capsys, tmp_path):
    """Before the first epoch: the size of the job; within epochs: a bar over batches; after: seed and best epoch."""
    config = SASRecConfig(**dict(TINY, epochs=2))
    with caplog.at_level("INFO", logger="genrec.models.sasrec"):
        rec = SASRecRecommender(config).fit(dataset, progress=True)
    size = re.search(r"(\d+) batches of 128 per epoch, at most 2 epochs \((\d+) batches\)", caplog.text)
    assert size and int(size.group(2)) == 2 * int(size.group(1)), caplog.text
    assert "epoch 1 took" in caplog.text and "best validation NDCG@10" in caplog.text
    total = int(size.group(2))
    assert f"{total}/{total}" in capsys.readouterr().err  # the bar counted every batch
    assert rec.epochs_run == 2 and 1 <= rec.best_epoch <= 2 and rec.train_seconds > 0
    rec.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "sasrec.json").read_text())
    assert saved["seed"] == 0 and saved["epochs_run"] == 2 and saved["best_epoch"] == rec.best_epoch
    again = SASRecRecommender.load(tmp_path / "m")
    assert (again.epochs_run, again.best_epoch, again.loaded_from) == (2, rec.best_epoch, tmp_path / "m")


def test_ensemble_averages_its_members_probabilities(fitted, dataset, valid_rows, tmp_path):
    from genrec.models.sasrec import SASRecEnsemble

    histories, targets = valid_rows
    other = SASRecRecommender(SASRecConfig(**dict(SMALL, epochs=2, seed=1))).fit(dataset, progress=False)
    fitted.save(tmp_path / "a")
    other.save(tmp_path / "b")
    ensemble = SASRecEnsemble.load([tmp_path / "a", tmp_path / "b"])
    assert isinstance(ensemble, Recommender)
    mean = (torch.softmax(fitted.scores(histories), -1) + torch.softmax(other.scores(histories), -1)) / 2
    assert torch.allclose(ensemble.scores(histories).exp(), mean, atol=1e-6)
    # one member alone ranks as that member does; excluded items stay out
    alone = SASRecEnsemble([fitted]).recommend(histories, k=10)
    assert ranked_indices(alone) == ranked_indices(fitted.recommend(histories, k=10))
    ranked = ranked_indices(ensemble.recommend(histories, k=10, exclude=histories))
    assert all(not set(r) & set(h) for r, h in zip(ranked, histories))
