"""Preference alignment (`genrec align`): S-DPO on the model's own beams, on the bundled set."""

from __future__ import annotations

import json
import math

import torch

from genrec.config import load_config
from genrec.decoding.hf import GenerativeRecommender
from genrec.exported import ExportedModel
from genrec.prompts import IGNORE_INDEX
from genrec.runs import RunFolder, file_hashes
from genrec.training.align import PREFERENCES_FILE, PreferenceTrainer, answer_logprobs, sdpo_loss
from genrec.training.losses import collate
from genrec.training.trainer import Trainer, TrainerCallback

from conftest import TINY_TRAINED, TRAIN_BASE, copy_run

ALIGN = [
    "align.users=240",
    "align.negatives=3",
    "align.num_beams=10",
    "align.batch_size=24",
    "align.epochs=2",
    "align.lr=0.001",
    "align.eval_every=10",
    "align.patience=0",
    "train.log_every=1",
]


def test_sdpo_is_dpo_with_one_negative_and_a_softmax_over_many():
    policy = torch.tensor([[-2.0, -1.0, -3.0]])
    reference = torch.tensor([[-2.5, -1.0, -2.0]])
    h = 0.5 * (policy - reference)
    expected = -torch.nn.functional.logsigmoid(-torch.logsumexp(h[:, 1:] - h[:, :1], dim=1)).mean()
    assert math.isclose(sdpo_loss(policy, reference, 0.5).item(), expected.item(), rel_tol=1e-6)
    # one negative: DPO's -log sigmoid(beta * (margin_chosen - margin_rejected))
    dpo = -torch.nn.functional.logsigmoid(torch.tensor(0.5 * ((-2.0 + 2.5) - (-1.0 + 1.0))))
    assert math.isclose(sdpo_loss(policy[:, :2], reference[:, :2], 0.5).item(), dpo.item(), rel_tol=1e-6)
    # raising the chosen answer's likelihood lowers the loss; raising a rejected one raises it
    assert sdpo_loss(policy + torch.tensor([[1.0, 0, 0]]), reference, 0.5) < sdpo_loss(policy, reference, 0.5)
    assert sdpo_loss(policy + torch.tensor([[0, 1.0, 0]]), reference, 0.5) > sdpo_loss(policy, reference, 0.5)


class _Margins(TrainerCallback):
    """At the end of the loop: how far the trained weights moved the chosen answers above the rejected."""

    def __init__(self):
        self.losses, self.margin = [], None

    def on_log(self, trainer, state, record):
        self.losses.append(record["loss"])

    def on_end(self, trainer, state):
        prefs = trainer.preferences
        trainer.model.eval()
        with torch.no_grad():
            lp = torch.cat(
                [
                    answer_logprobs(
                        trainer.model,
                        collate([ex for p in prefs["examples"][s : s + 40] for ex in p], trainer.pad_id, 256),
                    ).view(-1, 4)
                    for s in range(0, len(prefs["examples"]), 40)
                ]
            )
        ratio = lp - prefs["reference"]
        self.margin = (ratio[:, 0] - ratio[:, 1:].mean(1)).mean().item()


def test_align_mines_its_own_beams_and_moves_chosen_above_rejected(trained_demo_run, tmp_path):
    run = copy_run(trained_demo_run, tmp_path / "run")
    start_files = file_hashes(run / "model")
    cfg = load_config(TRAIN_BASE, [f"run_dir={run}", *TINY_TRAINED, *ALIGN])
    margins = _Margins()
    state = PreferenceTrainer(cfg, progress=False, callbacks=[margins]).train()

    # the start is kept as it was, and its validation is the first one and the score to beat
    assert file_hashes(run / "align" / "sft_model") == start_files
    assert state.evals[0]["step"] == 0 and state.best_metric >= state.evals[0]["ndcg@10"]
    # the rejected answers are the start model's own top beams, without the item that came next
    prefs = torch.load(run / "align" / PREFERENCES_FILE, weights_only=False)
    start = ExportedModel.load(run / "align" / "sft_model")
    rec = GenerativeRecommender(start.model, start.formatter, start.trie)
    for pref in prefs["examples"][:5]:
        chosen, *rejected = pref
        history = chosen.items[:-1]
        top = [r.index for r in rec.recommend([history], k=4, num_beams=10)[0]]
        assert [ex.target for ex in rejected] == [i for i in top if i != chosen.target][:3]
        prompt = [t for t, lab in zip(chosen.input_ids, chosen.labels) if lab == IGNORE_INDEX]
        assert all(ex.input_ids[: len(prompt)] == prompt for ex in rejected)
    # the loss fell and the trained weights rank the chosen answers above the rejected ones
    assert len(prefs["examples"]) >= 200 and prefs["reference"].shape == (len(prefs["examples"]), 4)
    assert sum(margins.losses[-5:]) / 5 < sum(margins.losses[:5]) / 5
    assert margins.margin > 0.5
    # the exported model records both stages and is what validation chose
    info = RunFolder(run).stage_info("model")
    assert info["aligned"]["preferences"] == len(prefs["examples"]) and "best_step" in info
    if state.best_step > 0:
        assert file_hashes(run / "model") != start_files
    # finished: running again only re-exports; a newly trained RUN/model starts alignment over
    again = PreferenceTrainer(cfg, progress=False).train()
    assert again.step == state.step
    Trainer(load_config(TRAIN_BASE, [f"run_dir={run}", *TINY_TRAINED, "train.max_steps=10"]), progress=False).train()
    retrained = file_hashes(run / "model")
    PreferenceTrainer(
        load_config(TRAIN_BASE, [f"run_dir={run}", *TINY_TRAINED, *ALIGN, "align.epochs=0.05"]), progress=False
    ).train()
    assert file_hashes(run / "align" / "sft_model") == retrained
    assert json.loads((run / "align" / "sft_info.json").read_text())["steps"] == 10
