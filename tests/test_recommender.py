"""One recommender interface and one evaluator for every model; atomic writes; config checks at load."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from conftest import TRAIN_BASE
from genrec.config import config_hash, load_config
from genrec.data import PreparedDataset
from genrec.decoding.hf import GenerativeRecommender
from genrec.errors import GenrecError, InputError, InternalError, NotReadyError
from genrec.evaluation.evaluator import Evaluator
from genrec.io import atomic_files, atomic_folder, atomic_write_json
from genrec.models.popularity import PopularityRecommender
from genrec.models.sasrec import SASRecConfig, SASRecRecommender
from genrec.recommender import Recommender, ranked_indices


@pytest.fixture(scope="module")
def dataset(trained_demo_run: Path) -> PreparedDataset:
    return PreparedDataset.load(trained_demo_run / "data")


@pytest.fixture(scope="module")
def models(trained_demo_run: Path, dataset: PreparedDataset) -> dict[str, Recommender]:
    sasrec = SASRecRecommender(
        SASRecConfig(hidden=32, layers=1, max_len=10, epochs=1, eval_users=50, num_threads=1)
    ).fit(dataset, progress=False)
    return {
        "popularity": PopularityRecommender().fit(dataset.train_rows(), dataset.n_items),
        "sasrec": sasrec,
        "genrec": GenerativeRecommender.from_folder(trained_demo_run / "model"),
    }


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_one_evaluator_scores_every_model(models, dataset, exclude_seen):
    evaluator = Evaluator(dataset, "test", max_users=60, seed=3, exclude_seen=exclude_seen)
    for name, model in models.items():
        assert isinstance(model, Recommender), name
        kwargs = {"num_beams": 10} if name == "genrec" else {}
        result = evaluator.evaluate(model, **kwargs)
        assert result.info["users"] == 60 and result.info["user_sample_seed"] == 3
        assert result.info["protocol"] == ("seen items excluded" if exclude_seen else "seen items kept")
        assert result.metrics["invalid_rate"] == 0.0 and 0 <= result.metrics["ndcg@10"] <= 1
        rows = ranked_indices(result.rankings)
        assert all(len(r) == len(set(r)) <= 10 for r in rows), name
        if exclude_seen:
            assert all(not set(r) & set(h) for r, h in zip(rows, evaluator.histories)), name


def test_allow_lists_hold_for_every_model(models, dataset):
    _, histories, _ = dataset.split_rows("test", 8, 0)
    allow = [list(range(i * 20, i * 20 + 15)) for i in range(len(histories))]
    for name, model in models.items():
        kwargs = {"num_beams": 10} if name == "genrec" else {}
        out = ranked_indices(model.recommend(histories, k=5, allow=allow, **kwargs))
        assert all(r and set(r) <= set(a) for r, a in zip(out, allow)), name


def test_batches_of_one_length_answer_each_user_as_alone(models, dataset):
    # recommend decodes users sorted by prompt length; each answer must still be that user's,
    # in the caller's order, with the user's own exclusions
    _, histories, _ = dataset.split_rows("test", 24, 1)
    histories = [h[-n:] for h, n in zip(histories, [1, 9, 3, 7, 2, 10] * 4)]  # lengths out of order
    exclude = [h[:1] for h in histories]
    model = models["genrec"]
    together = model.recommend(histories, k=5, num_beams=10, exclude=exclude, batch_size=8)
    for h, x, got in zip(histories, exclude, together):
        alone = model.recommend([h], k=5, num_beams=10, exclude=[x], batch_size=1)[0]
        assert [r.index for r in got] == [r.index for r in alone]
        assert [r.score for r in got] == pytest.approx([r.score for r in alone], abs=1e-4)
        assert x[0] not in {r.index for r in got}


def test_popularity_ranks_by_training_count_with_stable_ties():
    pop = PopularityRecommender().fit([[2, 2, 1], [1, 3], [0]], 5)
    assert ranked_indices(pop.recommend([[0]], k=5)) == [[1, 2, 0, 3, 4]]
    assert ranked_indices(pop.recommend([[1]], k=3, exclude=[[1]])) == [[2, 0, 3]]


def test_error_kinds_carry_their_http_status():
    assert InputError("x").http_status == 400 and isinstance(InputError("x"), (GenrecError, ValueError))
    assert NotReadyError("x").http_status == 503 and InternalError("x").http_status == 500


def test_atomic_helpers_never_leave_half_a_folder(tmp_path):
    target = tmp_path / "stage"
    with atomic_folder(target) as d:
        (d / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as d:
            (d / "a.txt").write_text("two")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["stage"]

    # concurrent writers of the same files each use their own temporary folder
    def write(n: int) -> None:
        with atomic_files(target) as d:
            atomic_write_json(d / "x.json", {"n": n})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert json.loads((target / "x.json").read_text())["n"] in range(8)
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "x.json"]


def test_config_errors_are_found_at_load_before_any_data(tmp_path):
    cfg = TRAIN_BASE
    cases = {
        "train.finetune=lorra": "did you mean 'lora'",
        "model.dropout=1.0": "it is a probability",
        "eval.num_beams=0": "eval.num_beams is 0",
        "serve.port=70000": "serve.port is 70000",
        "train.tasks={nextitem: 1.0}": "unknown task 'nextitem'",
        "trian.lr=1": "did you mean 'train'",
    }
    for override, message in cases.items():
        with pytest.raises(InputError, match=message) as e:
            load_config(cfg, [f"run_dir={tmp_path / 'never'}", override])
        assert f"override '{override}'" in str(e.value)
    assert not (tmp_path / "never").exists()


def test_config_hash_counts_only_settings_that_change_training():
    base = load_config(TRAIN_BASE)
    same = load_config(
        TRAIN_BASE,
        ["train.log_every=7", "train.num_threads=1", "train.max_minutes=3", "eval.num_beams=5"],
    )
    assert config_hash(base) == config_hash(same)
    assert config_hash(base) != config_hash(load_config(TRAIN_BASE, ["train.lr=0.01"]))
    # a field at its default does not count, so options added later keep old checkpoints resumable
    at_default = load_config(TRAIN_BASE, ["train.history_loss=0.0", "model.dropout=0"])
    assert config_hash(base) == config_hash(at_default)
