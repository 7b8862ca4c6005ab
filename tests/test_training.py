"""Prompts, leakage, fine-tuning, resume and export on the bundled demo set with a small model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from genrec.config import load_config
from genrec.data import PreparedDataset
from genrec.errors import GenrecError, InputError
from genrec.decoding.beam_search import constrained_beam_search, generate_reference, left_pad
from genrec.decoding.hf import GenerativeRecommender
from genrec.tokenization.stage import load_catalog
from genrec.tokenization.vocab import add_item_tokens, add_semantic_id_tokens, lift_item_vectors
from genrec.prompts import IGNORE_INDEX, PromptFormatter
from genrec.training.examples import training_examples
from genrec.training.setup import build_model
from genrec.config import config_hash as _config_hash
from genrec.training.losses import collate
from genrec.training.trainer import Trainer

from conftest import TRAIN_BASE, copy_prepared

REPO = Path(__file__).resolve().parents[1]

# a small scratch model: the same code path as SmolLM2, fast enough for tests
TINY = [
    "model.name=scratch",
    "model.scratch_hidden=64",
    "model.scratch_layers=2",
    "model.scratch_intermediate=128",
    "train.finetune=full",
    "train.lr=0.003",
    "train.batch_size=16",
    "train.bf16=false",
    "train.eval_every=0",
    "train.eval_users=40",
    "train.save_every=2",
    "train.log_every=2",
    "train.tasks={next_item: 1.0}",
    "eval.num_beams=10",
    "eval.bf16=false",
    "data.max_history=8",
]


def _cfg(run: Path, *extra: str):
    return load_config(TRAIN_BASE, [f"run_dir={run}", *TINY, *extra])


def _formatter(run: Path, smollm2_dir: Path) -> PromptFormatter:
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    catalog = load_catalog(run)
    add_semantic_id_tokens(tok, catalog)
    return PromptFormatter(tok, catalog, max_history=8)


def test_answer_follows_prompt_without_stray_tokens(demo_run, smollm2_dir):
    fmt = _formatter(demo_run, smollm2_dir)
    catalog = fmt.catalog
    ex = fmt.next_item([0, 1, 2], 5)
    prompt = fmt.next_item_prompt([0, 1, 2])
    answer = catalog.token_ids(fmt.tokenizer)[5].tolist() + [fmt.tokenizer.eos_token_id]
    # the example is exactly prompt + ID tokens + end of turn, loss only on the answer
    assert ex.input_ids == prompt + answer
    assert ex.labels == [IGNORE_INDEX] * len(prompt) + answer
    assert fmt.tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    # history IDs appear whole in the prompt
    for i in (0, 1, 2):
        assert catalog.sid(i) in fmt.tokenizer.decode(prompt)


def test_validation_and_test_targets_never_in_training(demo_run, smollm2_dir):
    fmt = _formatter(demo_run, smollm2_dir)
    ds = PreparedDataset.load(demo_run / "data")
    index = ds.item_index()
    tok = fmt.tokenizer
    checked = 0
    for user, seq in list(ds.train_sequences().items())[:150]:
        train = [index[i] for i in seq]
        held_out = {index[t] for name in ("valid", "test") for u, _, t in [_row(ds, name, user)]} - set(train)
        examples = training_examples(fmt, [train], {"next_item": 1.0, "conversational": 1.0}, seed=1)
        text = " ".join(tok.decode(e.input_ids) for e in examples)
        for item in held_out:
            assert fmt.catalog.sid(item) not in text
            checked += 1
    assert checked > 100


def _row(ds, split, user):
    for row in ds.split(split):
        if row[0] == user:
            return row
    raise AssertionError(user)


def test_collate_keeps_only_answer_logits(demo_run, smollm2_dir):
    fmt = _formatter(demo_run, smollm2_dir)
    exs = [fmt.next_item([0], 3), fmt.next_item(list(range(8)), 4), fmt.id_to_text(2)]
    batch = collate(exs, pad_id=fmt.tokenizer.eos_token_id, max_len=512)
    labels = batch["labels"]
    # every answer token lies inside the kept window, nothing of the prompt is labelled
    assert (labels[:, : labels.shape[1] - batch["keep"] + 1] == IGNORE_INDEX).all()
    assert int((labels != IGNORE_INDEX).sum()) == sum(sum(1 for x in e.labels if x != IGNORE_INDEX) for e in exs)
    # left padding: every row ends in the last column
    assert (batch["attention_mask"][:, -1] == 1).all()


def test_history_labels_mark_every_shown_item_but_the_first(demo_run, smollm2_dir):
    fmt = _formatter(demo_run, smollm2_dir)
    ids = fmt.catalog.token_ids(fmt.tokenizer)
    ex = fmt.next_item([0, 1, 2], 5, history_labels=True)
    labelled = [t for t in ex.history_labels if t != IGNORE_INDEX]
    # items 1 and 2 in order; item 0 (nothing before it) and the answer (already in labels) are not
    assert labelled == ids[1].tolist() + ids[2].tolist()
    assert len(ex.history_labels) == len(ex.input_ids)
    prompt_len = len(fmt.next_item_prompt([0, 1, 2]))
    assert all(t == IGNORE_INDEX for t in ex.history_labels[prompt_len:])
    # each labelled token sits where that token is
    assert all(ex.input_ids[p] == t for p, t in enumerate(ex.history_labels) if t != IGNORE_INDEX)


def test_windows_cover_each_transition_once(demo_run, smollm2_dir):
    fmt = _formatter(demo_run, smollm2_dir)  # max_history 8
    seq = list(range(20))
    exs = training_examples(fmt, [seq], {"next_item": 1.0}, next_item_examples="windows", history_labels=True)
    # answers 19 (history 11..18), 11 (3..10), 3 (0..2): every item after the first is an answer or
    # a labelled history item exactly once
    assert sorted(e.target for e in exs) == [3, 11, 19]
    ids = fmt.catalog.token_ids(fmt.tokenizer)
    by_tokens = {tuple(ids[i].tolist()): i for i in seq}
    depth = ids.shape[1]
    labelled = []
    for e in exs:
        tokens = [t for t in e.history_labels if t != IGNORE_INDEX]
        labelled += [by_tokens[tuple(tokens[j : j + depth])] for j in range(0, len(tokens), depth)]
    assert sorted(labelled + [3, 11, 19]) == list(range(1, 20))
    assert len(training_examples(fmt, [seq], {"next_item": 1.0})) == 19  # prefixes


def test_history_loss_is_code_only_cross_entropy(demo_run, smollm2_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    from genrec.training.losses import answer_loss

    fmt = _formatter(demo_run, smollm2_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(fmt.tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    exs = [fmt.next_item([0, 1, 2], 5, history_labels=True), fmt.next_item([3, 4], 6, history_labels=True)]
    batch = collate(exs, fmt.tokenizer.eos_token_id, 512)
    codes = torch.tensor(sorted(fmt.code_token_ids))
    base = answer_loss(model, batch)
    both = answer_loss(model, batch, codes, history_weight=0.5)
    # by hand: full logits, restricted to the code columns, at the positions before each history ID token
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits
    rows, cols = (batch["history_labels"] != IGNORE_INDEX).nonzero(as_tuple=True)
    assert len(rows) == 4 * 3  # three later history items of four codes
    picked = logits[rows, cols - 1][:, codes]
    target = torch.searchsorted(codes, batch["history_labels"][rows, cols])
    expected = torch.nn.functional.cross_entropy(picked, target)
    assert torch.allclose(both - base, 0.5 * expected, atol=1e-5)


def test_length_grouped_batches_cover_the_epoch_with_little_padding(demo_run, tmp_path):
    run = copy_prepared(demo_run, tmp_path / "run")
    plain = Trainer(_cfg(run, "train.next_item_examples=windows", "train.group_by_length=false"), progress=False)
    grouped = Trainer(_cfg(run, "train.next_item_examples=windows", "train.group_by_length=true"), progress=False)
    plain.setup()
    grouped.setup()
    n, bs = len(grouped.examples), grouped.tcfg.batch_size
    order = grouped._order(0)
    assert sorted(order) == list(range(n))  # every example once per epoch
    assert order != grouped._order(1)  # and a new grouping each epoch

    def padding(trainer) -> float:
        steps = range(trainer.steps_per_epoch)
        widths = [max(len(trainer.examples[i].input_ids) for i in trainer.batch_indices(s, 0)) for s in steps]
        used = [sum(len(trainer.examples[i].input_ids) for i in trainer.batch_indices(s, 0)) for s in steps]
        return 1 - sum(used) / sum(w * len(trainer.batch_indices(s, 0)) for s, w in zip(steps, widths))

    assert padding(grouped) < 0.5 * padding(plain)
    # batches do not come longest first: their order is shuffled
    widths = [max(len(grouped.examples[i].input_ids) for i in order[k : k + bs]) for k in range(0, n - bs, bs)]
    assert widths != sorted(widths, reverse=True)


@pytest.fixture(scope="module")
def demo_teacher(demo_run, tmp_path_factory) -> Path:
    """A small SASRec-CE fit on the demo set, saved as a distillation teacher."""
    from genrec.config import SASRecConfig
    from genrec.models.sasrec import SASRecRecommender

    folder = tmp_path_factory.mktemp("teacher")
    ds = PreparedDataset.load(demo_run / "data")
    SASRecRecommender(SASRecConfig(hidden=32, epochs=3, num_threads=1)).fit(ds, progress=False).save(folder)
    return folder


def _teacher_by_hand(teacher, items: list[int], j: int, level: int, codes: np.ndarray) -> np.ndarray:
    """The teacher's level-``level`` code distribution for ``items[j]``, one example at a time."""
    from genrec.models.sasrec import _left_pad

    with torch.no_grad():  # an ensemble's distribution is its members' mean
        p = 0
        for rec in teacher.ensemble.members:
            h = rec.model(_left_pad([[i + 1 for i in items[:-1]]], 50))[0, j - 1]  # state after items[j-1]
            p = p + torch.softmax(rec.model.logits(h), -1).numpy() / len(teacher.ensemble.members)
    if teacher.mask_seen:  # the items shown before items[j] get nothing, the rest renormalised
        p[[i for i in items[:j] if i != items[j]]] = 0.0
        p = p / p.sum()
    same = (codes[:, :level] == codes[items[j], :level]).all(1)
    out = np.bincount(codes[same, level], weights=p[same], minlength=int(codes[:, level].max()) + 1)
    return out / out.sum()


@pytest.mark.parametrize("teacher_seeds,mask_seen", [(1, False), (2, False), (1, True)])
def test_distillation_targets_are_the_teachers_code_mass(demo_run, demo_teacher, tmp_path, teacher_seeds, mask_seen):
    run = copy_prepared(demo_run, tmp_path / "kd")
    over = [
        "train.history_loss=1.0",
        "train.next_item_examples=windows",
        f"train.distill_from={demo_teacher}",
        "train.distill_weight=1.0",
        f"train.teacher_seeds={teacher_seeds}",
        f"train.distill_mask_seen={str(mask_seen).lower()}",
        # the ensemble's extra member is fitted by the trainer with the sasrec section
        "sasrec.hidden=32",
        "sasrec.epochs=2",
        "sasrec.num_threads=1",
    ]
    t = Trainer(_cfg(run, *over), progress=False)
    t.setup()
    assert len(t.teacher.ensemble.members) == teacher_seeds
    if teacher_seeds > 1:  # the extra seed is saved in the run and reused by the next trainer
        member = run / "teachers" / "sasrec-seed1" / "sasrec.json"
        assert member.is_file()
        stamp = member.stat().st_mtime_ns
        Trainer(_cfg(run, *over), progress=False).setup()
        assert member.stat().st_mtime_ns == stamp
    examples = t.batch_for(0, 0)
    batch = collate(examples, t.pad_id, t.tcfg.max_seq_len)
    rows, pos, dists = t.distill_targets(examples, batch["input_ids"].shape[1])
    codes = np.asarray(t.catalog.codes)
    code_ids = t.code_id_tensor
    depth = t.catalog.depth
    # one slot per ID token of every shown item after the first and of the answer
    n_items = sum(len(ex.items) - 1 for ex in examples)
    assert len(rows) == depth * n_items
    assert torch.allclose(dists.sum(1), torch.ones(len(dists)), atol=1e-5)
    # every slot sits on a code token, and the true code there always has teacher mass
    tok = batch["input_ids"][rows, pos]
    col = torch.searchsorted(code_ids, tok)
    assert (code_ids[col] == tok).all() and (dists[torch.arange(len(dists)), col] > 0).all()
    # each distribution is the teacher's item softmax summed under the prefix, level by level
    width = batch["input_ids"].shape[1]
    checked = set()
    for n in range(len(rows)):
        r, p = int(rows[n]), int(pos[n])
        ex = examples[r]
        seq = ex.input_ids[-t.tcfg.max_seq_len :]
        slot = next(
            s for s in t.teacher.slots(seq, ex.items, t.formatter.code_token_ids) if s[0] + width - len(seq) == p
        )
        _, j, level = slot
        if level in checked and len(checked) == depth:
            break
        checked.add(level)
        expect = _teacher_by_hand(t.teacher, ex.items, j, level, codes)
        level_tokens = t.tokenizer.convert_tokens_to_ids([f"<{'abcdefgh'[level]}_{c}>" for c in range(len(expect))])
        got = dists[n, torch.searchsorted(code_ids, torch.tensor(level_tokens))].numpy()
        np.testing.assert_allclose(got, expect, atol=1e-5)
        assert tok[n] == level_tokens[codes[ex.items[j], level]]
    assert checked == set(range(depth))


def test_distillation_pulls_the_student_to_the_teacher(demo_run, demo_teacher, tmp_path):
    from genrec.training.losses import answer_loss

    over = ["train.history_loss=1.0", "train.next_item_examples=windows", "train.max_steps=40", "train.lr=0.01"]
    kd = [f"train.distill_from={demo_teacher}", "train.distill_weight=1.0"]
    soft_ce = {}
    for name, extra in (("plain", []), ("distilled", kd)):
        t = Trainer(_cfg(copy_prepared(demo_run, tmp_path / name), *over, *extra), progress=False)
        t.train()
        # the distillation term of held-out batches (steps past the training ones), for both students
        probe = Trainer(_cfg(copy_prepared(demo_run, tmp_path / f"{name}-probe"), *over, *kd), progress=False)
        probe.setup()
        total = 0.0
        with torch.no_grad():
            for step in range(60, 64):
                exs = probe.batch_for(step, 0)
                b = collate(exs, probe.pad_id, probe.tcfg.max_seq_len)
                b["distill"] = probe.distill_targets(exs, b["input_ids"].shape[1])
                total += float(answer_loss(t.model.eval(), b, t.code_id_tensor, 0.0, 1.0) - answer_loss(t.model, b))
        soft_ce[name] = total / 4
    assert soft_ce["distilled"] < soft_ce["plain"] - 0.05, soft_ce


def test_distillation_settings_are_checked_before_training(demo_run, tmp_path):
    with pytest.raises(GenrecError, match="distill_from names no teacher"):
        Trainer(_cfg(demo_run, "train.distill_weight=1.0"), progress=False)
    with pytest.raises(GenrecError, match="holds no saved SASRec"):
        Trainer(_cfg(demo_run, "train.distill_weight=1.0", f"train.distill_from={tmp_path}"), progress=False)
    with pytest.raises(GenrecError, match="distill_weight is -1"):
        Trainer(_cfg(demo_run, "train.distill_weight=-1"), progress=False)


def test_unknown_task_and_finetune_are_clear_errors(demo_run):
    with pytest.raises(GenrecError, match="unknown task 'nextitem'"):
        Trainer(_cfg(demo_run, "train.tasks={nextitem: 1.0}"), progress=False)
    with pytest.raises(GenrecError, match="unknown train.finetune"):
        Trainer(_cfg(demo_run, "train.finetune=lorra"), progress=False)
    with pytest.raises(GenrecError, match="unknown train.next_item_examples 'window'"):
        Trainer(_cfg(demo_run, "train.next_item_examples=window"), progress=False)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(demo_run, tmp_path):
    steps = ["train.max_steps=6"]
    a = copy_prepared(demo_run, tmp_path / "a")
    state_a = Trainer(_cfg(a, *steps), progress=False).train()
    assert state_a.step == 6 and (a / "model" / "config.json").is_file()

    b = copy_prepared(demo_run, tmp_path / "b")
    partial = Trainer(_cfg(b, *steps), progress=False).train(stop_after_steps=3)
    assert partial.step == 3 and not (b / "model").exists()
    # the last checkpoint is at step 2 (save_every=2): step 3 is lost, as in a kill
    assert json.loads((b / "train" / "checkpoint" / "state.json").read_text())["step"] == 2
    state_b = Trainer(_cfg(b, *steps), progress=False).train()
    assert state_b.step == 6
    wa = AutoModelForCausalLM.from_pretrained(a / "model").state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b / "model").state_dict()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    # the same metrics at the same steps (the minute each was reached is the wall clock's, not the model's)
    for ea, eb in zip(state_a.evals, state_b.evals, strict=True):
        assert {**ea, "minutes": None} == {**eb, "minutes": None}

    # a different config cannot silently resume someone else's checkpoint
    c = copy_prepared(demo_run, tmp_path / "c")
    Trainer(_cfg(c, *steps), progress=False).train(stop_after_steps=2)
    with pytest.raises(GenrecError, match="different config"):
        Trainer(_cfg(c, "train.max_steps=6", "train.lr=0.01"), progress=False).train()


def test_time_budget_ends_at_the_low_learning_rate(demo_run, tmp_path):
    # 100,000 planned steps cannot run in 1.2 s: the budget stops the run. With anneal_by_time the
    # schedule has followed the clock to its floor (0.1 x peak); without it the run is cut in warm-up.
    lrs = {}
    for anneal in (True, False):
        run = copy_prepared(demo_run, tmp_path / f"anneal-{anneal}")
        state = Trainer(
            _cfg(
                run,
                "train.max_steps=100000",
                "train.max_minutes=0.02",
                f"train.anneal_by_time={str(anneal).lower()}",
                "train.save_every=0",
            ),
            progress=False,
        ).train()
        assert state.stop_reason.startswith("time budget") and 0 < state.step < 100000
        assert state.minutes >= 0.02
        blob = torch.load(run / "train" / "checkpoint" / "checkpoint.pt", weights_only=False)
        lrs[anneal] = blob["scheduler"]["_last_lr"][0]
    assert lrs[True] == pytest.approx(0.1 * 0.003)
    assert lrs[False] < 0.1 * 0.003  # still warming up: (step + 1) / 5,000 of the peak


def test_item_tokens_follow_each_history_id(demo_run, smollm2_dir):
    plain = _formatter(demo_run, smollm2_dir)
    tok, catalog = plain.tokenizer, plain.catalog
    item_ids = add_item_tokens(tok, catalog)
    assert add_item_tokens(tok, catalog) == item_ids and min(item_ids) >= 49152  # idempotent, new rows
    fmt = PromptFormatter(tok, catalog, max_history=8, item_tokens=True)
    codes = catalog.token_ids(tok)
    ex = fmt.next_item([0, 1, 2], 5, history_labels=True)
    prompt_len = len(fmt.next_item_prompt([0, 1, 2]))
    prompt = ex.input_ids[:prompt_len]
    # each history ID is followed by that item's own token, in order; the answer is the ID alone
    shown = [t for t in prompt if t in set(item_ids)]
    assert shown == [item_ids[0], item_ids[1], item_ids[2]]
    for i in (0, 1, 2):
        at = prompt.index(item_ids[i])
        assert prompt[at - catalog.depth : at] == codes[i].tolist()
    assert ex.input_ids[prompt_len:] == codes[5].tolist() + [tok.eos_token_id]
    # the history loss labels the same code tokens as without item tokens
    assert [t for t in ex.history_labels if t != IGNORE_INDEX] == [
        t for t in plain.next_item([0, 1, 2], 5, history_labels=True).history_labels if t != IGNORE_INDEX
    ]
    # an item added after training has no token: it is shown by its ID alone, and the settings
    # an exported model stores rebuild the same formatter
    grown = catalog.with_items(
        ["new-item"], np.array([[0] * (catalog.depth - 1) + [catalog.level_sizes[-1] - 1]]), ["New"], ["New"]
    )
    again = PromptFormatter.from_settings(tok, grown, fmt.settings())
    assert again.item_tokens and again.next_item_prompt([0, 1, 2]) == fmt.next_item_prompt([0, 1, 2])
    text = again.history_text([0, len(catalog)])
    assert text == f"{catalog.sid(0)}<item_{catalog.item_ids[0]}>, {grown.sid(len(catalog))}"


def test_item_tokens_train_with_lora_and_serve(demo_run, tmp_path):
    run = copy_prepared(demo_run, tmp_path / "items")
    cfg = _cfg(run, "train.finetune=lora", "train.item_tokens=true", "train.max_steps=3", "train.lr=0.01")
    assert _config_hash(cfg) != _config_hash(_cfg(run, "train.finetune=lora", "train.max_steps=3", "train.lr=0.01"))
    catalog = load_catalog(run)
    tok, init, _ = build_model(cfg, catalog)
    w0 = init.get_input_embeddings().weight.detach().clone()
    item_ids = tok.convert_tokens_to_ids(catalog.item_tokens())
    codes = torch.as_tensor(catalog.token_ids(tok))
    # an item row starts as its ID: the direction of the mean of its code rows, at the usual norm
    assert torch.nn.functional.cosine_similarity(w0[item_ids], w0[codes].mean(1)).min() > 0.999
    trainer = Trainer(cfg, progress=False)
    trainer.train()
    exported = run / "model"
    w1 = AutoModelForCausalLM.from_pretrained(exported).get_input_embeddings().weight.detach()
    # LoRA trains the item rows too (they are in trainable_token_indices); the base vocabulary stays
    seen = sorted({i for seq in trainer.train_seqs for i in seq[-9:-1]})
    assert not torch.allclose(w1[[item_ids[i] for i in seen]], w0[[item_ids[i] for i in seen]])
    assert torch.equal(w1[:49152], w0[:49152])
    rec = GenerativeRecommender.from_folder(exported)
    assert rec.formatter.item_tokens
    assert rec.formatter.next_item_prompt([0, 1, 2]) == trainer.formatter.next_item_prompt([0, 1, 2])
    out = rec.recommend([[0, 1, 2]], k=5, num_beams=10)
    assert len(out[0]) == 5 and all(r.item_id in catalog for r in out[0])


def test_lift_keeps_angles_and_reaches_any_width():
    vectors = torch.randn(50, 16)
    up, down = lift_item_vectors(vectors, 64, seed=3), lift_item_vectors(vectors, 8, seed=3)
    assert up.shape == (50, 64) and down.shape == (50, 8)
    assert torch.allclose(up @ up.T, vectors @ vectors.T, atol=1e-4)  # an isometry up to the model width
    assert torch.equal(up, lift_item_vectors(vectors, 64, seed=3))  # fixed for a seed


def test_item_token_rows_from_the_teacher_stay_frozen(demo_run, tmp_path):
    from genrec.models.sasrec import SASRecConfig, SASRecRecommender

    run = copy_prepared(demo_run, tmp_path / "teacher-items")
    teacher = SASRecRecommender(SASRecConfig(hidden=32, layers=1, max_len=8, epochs=1, eval_users=50, num_threads=1))
    teacher.fit(PreparedDataset.load(run / "data"), progress=False).save(tmp_path / "sasrec")
    sets = ["train.item_tokens=true", "train.item_token_rows=teacher", f"train.distill_from={tmp_path / 'sasrec'}"]
    cfg = _cfg(run, *sets, "train.max_steps=3", "train.lr=0.01")
    trainer = Trainer(cfg, progress=False)
    trainer.setup()
    catalog, tok = trainer.catalog, trainer.tokenizer
    item_ids = tok.convert_tokens_to_ids(catalog.item_tokens())
    w0 = trainer.model.get_input_embeddings().weight.detach().clone()
    lifted = lift_item_vectors(teacher.model.item_emb.weight[1:].detach(), w0.shape[1], cfg.seed)
    # each item row is the teacher's item vector, lifted to the model width (at the usual row norm)
    assert torch.nn.functional.cosine_similarity(w0[item_ids], lifted).min() > 0.999
    trainer.train()
    w1 = AutoModelForCausalLM.from_pretrained(run / "model").get_input_embeddings().weight.detach()
    assert torch.equal(w1[item_ids], w0[item_ids])  # frozen
    codes = sorted(set(catalog.token_ids(tok)[:, 0].tolist()))
    assert not torch.allclose(w1[codes], w0[codes])  # while the code rows learn
    rec = GenerativeRecommender.from_folder(run / "model")
    assert rec.formatter.item_tokens and len(rec.recommend([[0, 1, 2]], k=5, num_beams=10)[0]) == 5

    with pytest.raises(InputError, match="item_tokens is off"):
        Trainer(_cfg(run, *sets[1:], "train.max_steps=3"), progress=False)
    with pytest.raises(InputError, match="weight_decay"):
        Trainer(_cfg(run, *sets, "train.weight_decay=0.1"), progress=False)
    with pytest.raises(InputError, match="holds none"):
        Trainer(_cfg(run, *sets[:2], f"train.distill_from={tmp_path}"), progress=False)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_dropout_acts_only_while_training(demo_run, finetune):
    catalog = load_catalog(demo_run)
    plain_cfg = _cfg(demo_run, f"train.finetune={finetune}")
    drop_cfg = _cfg(demo_run, f"train.finetune={finetune}", "model.dropout=0.3")
    tok, plain, _ = build_model(plain_cfg, catalog)
    _, dropped, _ = build_model(drop_cfg, catalog)
    formatter = PromptFormatter(tok, catalog, max_history=8)
    ids = collate([formatter.next_item([0, 1, 2], 3)], tok.eos_token_id, 256)["input_ids"]
    with torch.no_grad():
        dropped.train()
        a, b = dropped(input_ids=ids).logits, dropped(input_ids=ids).logits
        assert not torch.allclose(a, b)  # a fresh mask per pass
        plain.train()
        assert torch.equal(plain(input_ids=ids).logits, plain(input_ids=ids).logits)
        dropped.eval()
        plain.eval()
        # same seed, same weights: evaluation sees exactly the model without dropout
        assert torch.allclose(dropped(input_ids=ids).logits, plain(input_ids=ids).logits)
    # the setting is part of what training produces: a run cannot resume another's checkpoint
    assert _config_hash(drop_cfg) != _config_hash(plain_cfg)
    with pytest.raises(GenrecError, match="model.dropout is 1.0"):
        Trainer(_cfg(demo_run, "model.dropout=1.0"), progress=False)


def test_dropout_model_saves_as_plain_llama(demo_run, tmp_path):
    run = copy_prepared(demo_run, tmp_path / "drop")
    trainer = Trainer(_cfg(run, "train.max_steps=4", "model.dropout=0.2"), progress=False)
    trainer.train()
    saved = AutoModelForCausalLM.from_pretrained(run / "model")
    batch = collate([trainer.formatter.next_item([0, 1, 2], 3)], trainer.tokenizer.eos_token_id, 256)
    saved.train()  # even in train mode the loaded model has no hooks: identical passes
    with torch.no_grad():
        assert torch.equal(saved(input_ids=batch["input_ids"]).logits, saved(input_ids=batch["input_ids"]).logits)


@pytest.mark.slow
def test_lora_export_is_a_standalone_model(demo_run, tmp_path):
    run = copy_prepared(demo_run, tmp_path / "lora")
    cfg = _cfg(run, "train.finetune=lora", "train.max_steps=3", "train.lr=0.01")
    trainer = Trainer(cfg, progress=False)
    trainer.train()
    exported = run / "model"
    # plain transformers loads it: no peft, the code tokens inside the tokenizer
    model = AutoModelForCausalLM.from_pretrained(exported)
    tok = AutoTokenizer.from_pretrained(exported)
    catalog = load_catalog(run)
    assert tok.convert_tokens_to_ids(catalog.code_tokens()[0]) >= 49152
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    # merged logits equal the adapter model's logits
    batch = collate([trainer.formatter.next_item([0, 1], 2)], tok.eos_token_id, 256)
    with torch.no_grad():
        merged = model(input_ids=batch["input_ids"]).logits
        peft_logits = trainer.model(input_ids=batch["input_ids"]).logits
    assert torch.allclose(merged, peft_logits, atol=1e-3)
    rec = GenerativeRecommender.from_folder(exported)
    out = rec.recommend([[0, 1, 2]], k=5, num_beams=10)
    assert len(out[0]) == 5 and all(r.item_id in catalog for r in out[0])

    # the CLI on the exported run: recommend for chosen users, evaluate a split
    users = PreparedDataset.load(run / "data").split("test")[:3]
    (tmp_path / "users.txt").write_text("\n".join(u for u, _, _ in users) + "\n")
    env_cmd = [sys.executable, "-m", "genrec.cli"]
    res = subprocess.run(
        env_cmd
        + [
            "recommend",
            str(run),
            "--users",
            str(tmp_path / "users.txt"),
            "-k",
            "5",
            "--num-beams",
            "5",
            "--fp32",
            "--include-seen",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    # seen items are excluded by default (tests/test_byod.py); --include-seen keeps them, and says so
    assert "3 users, top 5, items already in each user's history included (--include-seen)" in res.stdout
    lines = [json.loads(x) for x in (run / "recommendations_test.jsonl").read_text().splitlines()]
    assert [x["user_id"] for x in lines] == [u for u, _, _ in users]
    assert all(len(x["items"]) == 5 and all(i["item_id"] in catalog and i["title"] for i in x["items"]) for x in lines)
    scores = [i["score"] for i in lines[0]["items"]]
    assert scores == sorted(scores, reverse=True)
    res = subprocess.run(
        env_cmd + ["evaluate", str(run), "--max-users", "20", "-k", "5", "--num-beams", "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    result = json.loads((run / "eval" / "test.json").read_text())
    assert result["users"] == 20 and result["genrec"]["invalid_rate"] == 0
    assert {"recall@5", "ndcg@5", "mrr", "coverage@5"} <= set(result["genrec"]) and "popularity" in result
    res = subprocess.run(
        env_cmd + ["recommend", str(run), "--users", str(tmp_path / "nope.txt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "users file not found" in res.stderr


def test_scratch_model_learns_the_demo_set(trained_demo_run):
    """150 steps of the scratch backbone (the shared trained run) beat a random ranking by far on validation."""
    run = trained_demo_run
    state = json.loads((run / "train" / "state.json").read_text())
    last = state["evals"][-1]
    n_items = len(load_catalog(run))
    assert last["recall@10"] > 5 * 10 / n_items, state["evals"]
    assert last["invalid_rate"] == 0
    assert last["step"] == 150 and 0 < last["minutes"] <= state["minutes"] + 0.01  # rounded

    # on the trained model, in fp32, our decoder ranks like generate + prefix_allowed_tokens_fn
    rec = GenerativeRecommender.from_folder(run / "model")
    ds = PreparedDataset.load(run / "data")
    index = ds.item_index()
    histories = [[index[i] for i in h] for _, h, _ in ds.split("test")[:6]]
    prompts = [rec.formatter.next_item_prompt(h) for h in histories]
    ids, mask = left_pad(prompts, rec.pad_id)
    ours = constrained_beam_search(rec.model, ids, mask, rec.trie, num_beams=10, top_k=10, softmax="vocabulary")
    ref = generate_reference(
        rec.model, ids, mask, rec.trie, num_beams=10, top_k=10, eos_token_id=rec.formatter.tokenizer.eos_token_id
    )
    for a, b in zip(ours, ref):
        assert [i for i, _ in a] == [i for i, _ in b] or _near_tied(a, b)


def _near_tied(a, b, tol: float = 1e-4) -> bool:
    """Rankings that differ only by swaps of items whose scores are within ``tol``."""
    sa, sb = dict(a), dict(b)
    if set(sa) != set(sb):
        return False
    return all(abs(sa[i] - sb[i]) < tol for i in sa) and all(abs(x[1] - y[1]) < tol for x, y in zip(a, b))


def test_qlora_trains_and_exports_a_plain_model(demo_run, tmp_path, smollm2_dir):
    """4-bit (bitsandbytes nf4) base + LoRA on CPU: the adapters learn and the export loads without bnb."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    base = tmp_path / "tiny-base"
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    ).save_pretrained(base)
    tok.save_pretrained(base)
    run = copy_prepared(demo_run, tmp_path / "qlora")
    cfg = _cfg(
        run, f"model.name={base}", "train.finetune=qlora", "train.max_steps=8", "train.lr=0.01", "train.bf16=true"
    )
    trainer = Trainer(cfg, progress=False)
    state = trainer.train()
    losses = [json.loads(x)["loss"] for x in (run / "train" / "log.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses[-1] < losses[0], losses
    exported = AutoModelForCausalLM.from_pretrained(run / "model")
    assert not getattr(exported.config, "quantization_config", None)
    assert state.evals[-1]["invalid_rate"] == 0


def test_keep_layers_cuts_smollm2_and_windows_count_every_trained_transition(demo_run, tmp_path):
    """model.keep_layers: a 3-layer SmolLM2 trains, exports with 3 layers and recommends; with the
    history loss each step trains far more transitions than examples (the log's transitions_per_s)."""
    run = copy_prepared(demo_run, tmp_path / "cut")
    extra = [
        f"run_dir={run}",
        "model.keep_layers=3",
        "train.finetune=lora",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.bf16=false",
        "train.eval_every=0",
        "train.eval_users=10",
        "train.log_every=1",
        "train.next_item_examples=windows",
        "train.history_loss=1.0",
        "train.tasks={next_item: 1.0}",
        "eval.num_beams=5",
        "eval.top_k=5",
    ]
    Trainer(load_config(TRAIN_BASE, extra), progress=False).train()
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3
    rec = GenerativeRecommender.from_folder(run / "model")
    assert len(rec.model.model.layers) == 3
    out = rec.recommend([[0, 1, 2]], k=5, num_beams=5)
    assert len(out[0]) == 5 and all(r.item_id in rec.catalog for r in out[0])
    log = [json.loads(line) for line in (run / "train" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "transitions_per_s" in r]
    assert steps and all(r["transitions_per_s"] > 3 * r["examples_per_s"] for r in steps)
    with pytest.raises(InputError, match="keep_layers=99"):
        build_model(load_config(TRAIN_BASE, [*extra, "model.keep_layers=99"]), load_catalog(run))


def test_distillation_without_a_teacher_says_where_one_comes_from(demo_run, tmp_path):
    # no train.distill_from, and this run's IDs were not cut from a SASRec: no teacher to default to
    run = copy_prepared(demo_run, tmp_path / "noteacher")
    assert not (run / "tokenize" / "collab_sasrec").exists()
    with pytest.raises(InputError, match="collab_method: sasrec"):
        Trainer(_cfg(run, "train.distill_weight=1.0"), progress=False)
