"""The cold-start protocol: held-out items reach no training example and no semantic-ID fit.

Real data (the bundled MovieTweetings set), the real tokenize stage (MiniLM text vectors,
residual k-means), the real trainer's example set and the real evaluator.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TRAIN_BASE

from genrec.config import load_config
from genrec.data import PreparedDataset, prepare_stage
from genrec.evaluation.baselines import run_content, run_popularity
from genrec.tokenization.catalog import Catalog
from genrec.tokenization.semantic_ids import SemanticIdTokenizer
from genrec.tokenization.stage import tokenize_stage
from genrec.tokenization.updates import add_items, remove_items

COLD = ["data.cold_items=0.1", "tokenize.quantizer.codebook_size=16", "tokenize.min_dedup_codes=8"]


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cold") / "run"
    cfg = load_config(TRAIN_BASE, [f"run_dir={run}", *COLD])
    prepare_stage(cfg)
    tokenize_stage(cfg)
    return run, cfg


@pytest.mark.parametrize("selection", ["newest", "random"])
def test_cold_items_appear_only_as_test_targets(tmp_path, selection):
    cfg = load_config(TRAIN_BASE, [f"run_dir={tmp_path}", "data.cold_items=0.1", f"data.cold_selection={selection}"])
    ds = prepare_stage(cfg)
    cold = set(ds.cold_items)
    assert len(cold) > 50 and ds.filters["cold"]["test_targets"] == len(cold)
    for seq in ds.sequences["items"]:
        assert not cold & set(seq[:-1])  # training items, validation target, every history
    assert cold <= {s[-1] for s in ds.sequences["items"]}
    assert not cold & {i for s in ds.train_sequences().values() for i in s}
    assert not cold & ({t for _, _, t in ds.split("valid")} | {i for _, h, _ in ds.split("test") for i in h})
    again = PreparedDataset.load(tmp_path)
    assert again.cold_items == sorted(cold) and again.cold_rows() == ds.cold_rows()
    if selection == "newest":
        # every held-out item first appears no earlier than every item that stayed warm
        full = prepare_stage(load_config(TRAIN_BASE, [f"run_dir={tmp_path / 'full'}"]))
        first: dict[str, int] = {}
        for items, stamps in zip(full.sequences["items"], full.sequences["timestamps"]):
            for i, t in zip(items, stamps):
                first[i] = min(t, first.get(i, t))
        warm = set(ds.items["item_id"]) - cold
        assert min(first[i] for i in cold) >= max(first[i] for i in warm)


def test_cold_items_never_reach_the_id_fit_and_get_their_ids_as_items_add_gives_them(cold_run, tmp_path):
    run, cfg = cold_run
    ds = PreparedDataset.load(run)
    catalog = Catalog.load(run / "tokenize")
    warm, cold = ds.warm_rows(), ds.cold_rows()
    # the fit saw the warm items' vectors only: fitting them alone gives the same codes
    X = np.load(run / "tokenize" / "item_vectors.npy")
    alone = SemanticIdTokenizer(cfg.tokenize.quantizer, cfg.tokenize.min_dedup_codes).fit(X[warm])
    assert np.array_equal(alone.codes_, np.asarray(catalog.codes)[warm])
    # removing the cold items and adding them back with `genrec items add` gives the same IDs
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cold_ids = [ds.items["item_id"][i] for i in cold]
    remove_items(copy, cold_ids)
    added = dict(add_items(copy, ds.items.iloc[cold].reset_index(drop=True)))
    assert {i: catalog.sid_of(i) for i in cold_ids} == added


def test_no_training_example_shows_a_cold_item(cold_run, tmp_path):
    from genrec.training.trainer import Trainer

    run, _ = cold_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = load_config(
        TRAIN_BASE,
        [
            f"run_dir={copy}",
            *COLD,
            "model.name=scratch",
            "model.scratch_hidden=32",
            "model.scratch_layers=1",
            "model.scratch_intermediate=64",
            "train.finetune=full",
            "train.tasks={next_item: 1.0, text_to_id: 1.0, id_to_text: 1.0, conversational: 1.0}",
        ],
    )
    trainer = Trainer(cfg, progress=False)
    trainer.setup()
    ds, catalog, tok = trainer.dataset, trainer.catalog, trainer.tokenizer
    cold = set(ds.cold_rows())
    sids = catalog.token_ids(tok)
    cold_sids = {tuple(sids[i]) for i in cold}
    depth = sids.shape[1]
    tasks = set()
    for ex in trainer.examples:
        tasks.add(ex.task)
        assert ex.target not in cold
        assert not cold & set(ex.items or [])
        ids = ex.input_ids
        windows = {tuple(ids[j : j + depth]) for j in range(len(ids) - depth + 1)}
        assert not windows & cold_sids, ex.task
    assert tasks == {"next_item", "text_to_id", "id_to_text", "conversational"}
    titles = {catalog.titles[i] for i in cold}
    shown = {tok.decode(ex.input_ids) for ex in trainer.examples if ex.task in ("id_to_text", "text_to_id")}
    assert not any(t in text for t in titles for text in shown if len(t) > 12)


def test_evaluation_scores_cold_and_warm_targets_apart(cold_run, tmp_path):
    run, cfg = cold_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    pop = run_popularity(copy)
    content = run_content(copy, cfg.tokenize.embedding, max_history=cfg.data.max_history)
    ds = PreparedDataset.load(copy)
    n_cold = sum(s[-1] in set(ds.cold_items) for s in ds.sequences["items"])
    for m in (pop, content):
        assert m["cold_targets"]["users"] == n_cold
        assert m["warm_targets"]["users"] == ds.n_users - n_cold
    # popularity never saw a cold item: it can't recommend one; text can
    assert pop["cold_share@10"] == 0 and pop["cold_targets"]["recall@10"] == 0
    assert content["cold_share@10"] > 0 and content["cold_targets"]["recall@10"] > 0
    assert pd.read_json(copy / "baselines" / "content" / "metrics_test.json", typ="series")["decay"] == 0.8


def test_cold_start_needs_ids_from_text(tmp_path):
    from genrec.errors import InputError

    cfg = load_config(TRAIN_BASE, [f"run_dir={tmp_path}", "data.cold_items=0.1", "tokenize.embedding.source=collab"])
    prepare_stage(cfg)
    with pytest.raises(InputError, match="source: text or both"):
        tokenize_stage(cfg)


def test_new_item_places_hold_new_items_and_respect_exclusions(trained_demo_run):
    from genrec.decoding.hf import GenerativeRecommender

    rec = GenerativeRecommender.from_folder(trained_demo_run / "model")
    ds = PreparedDataset.load(trained_demo_run)
    _, histories, _ = ds.split_rows("test", 24, 0)
    plain = rec.recommend(histories, k=10, num_beams=10)
    # stand-ins for new items: rows the beams did not return
    returned = {r.index for row in plain for r in row}
    new = [i for i in range(len(rec.catalog)) if i not in returned][:50]
    banned = new[:5]
    ranked = rec.recommend(
        histories, k=10, num_beams=10, new_items=new, new_item_slots=2, exclude=[banned] * len(histories)
    )
    scores = rec.new_item_scores([rec.formatter.next_item_prompt(h) for h in histories], new)
    for row, before, s in zip(ranked, plain, scores):
        picked = [r.index for r in row if r.index in set(new)]
        assert len(row) == 10 and len(picked) == 2 and not set(picked) & set(banned)
        best = [new[j] for j in torch.argsort(s, descending=True, stable=True).tolist() if new[j] not in banned][:2]
        assert sorted(picked) == sorted(best)
        assert [r.index for r in row if r.index not in set(new)] == [r.index for r in before][:8]
