"""The natural-language request protocol: real data, no leak of the target's title, every system scored."""

from __future__ import annotations

import shutil

from genrec.data import PreparedDataset
from genrec.decoding.conversation import normalize
from genrec.decoding.hf import GenerativeRecommender
from genrec.evaluation.requests import FORMS, SYSTEMS, build_requests, evaluate_requests, wishes


def test_requests_state_the_target_without_naming_it(trained_demo_run):
    rec = GenerativeRecommender.from_folder(trained_demo_run / "model")
    ds = PreparedDataset.load(trained_demo_run)
    _, histories, targets = ds.split_rows("test")
    req = build_requests(ds, rec.formatter, histories, targets, max_users=300, seed=3)
    assert len(req.rows) == 300 and req.without_wish == 0
    wish_of = wishes(ds)
    for n, j in enumerate(req.rows):
        title = normalize(rec.catalog.titles[targets[j]])
        for form in FORMS:
            text = req.texts[form][n]
            assert title not in normalize(text)
            assert wish_of[targets[j]] in text  # the wish is the target's genre
        # the liked titles are the user's most recent items, the target is not among them
        recent = histories[j][-5:]
        assert all(rec.catalog.titles[i] in req.texts["liked_wish"][n] for i in recent)
    again = build_requests(ds, rec.formatter, histories, targets, max_users=300, seed=3)
    assert again.rows == req.rows and again.texts == req.texts


def test_every_system_is_scored_on_both_forms(trained_demo_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_demo_run, run, ignore=shutil.ignore_patterns("train"))
    res = evaluate_requests(run, max_users=40, num_beams=10, bf16=False, progress=False)
    assert res["users"] == 40 and (run / "eval" / "test_requests.json").is_file()
    for form in FORMS:
        for name in SYSTEMS:
            m = res[form][name]
            assert m["users"] == 40 and m["invalid_rate"] == 0
    # titles in the text resolve to the items the chat path prompts with; a wish alone names none
    assert res["liked_wish"]["history_items_resolved"] > 0.8
    assert res["wish"]["history_items_resolved"] < 0.05
