"""Constrained beam search on a tiny random Llama: validity, exact scores, agreement with `generate`."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from genrec.decoding.beam_search import constrained_beam_search, generate_reference
from genrec.decoding.beam_search import left_pad as pad_left
from genrec.tokenization.catalog import Catalog
from genrec.tokenization.trie import ItemTrie

TEXT_VOCAB = 100  # ordinary "text" tokens 0..99; code tokens follow, level by level
LEVELS = (8, 8, 6, 4)
EOS = 1
PAD = 0
PROMPT_LENGTHS = (9, 4, 13)


def random_catalog(n: int = 300, sizes=LEVELS, seed: int = 0) -> Catalog:
    rng = np.random.default_rng(seed)
    all_codes = np.array(list(itertools.product(*[range(s) for s in sizes])))
    codes = all_codes[rng.choice(len(all_codes), n, replace=False)]
    return Catalog([f"it{i}" for i in range(n)], codes, list(sizes), [f"Item {i}" for i in range(n)], [""] * n)


@pytest.fixture(scope="module")
def setup():
    catalog = random_catalog()
    offsets = TEXT_VOCAB + np.concatenate([[0], np.cumsum(LEVELS)[:-1]])
    sequences = catalog.codes + offsets  # contiguous code-token ids at the top of the vocab
    vocab = TEXT_VOCAB + sum(LEVELS)
    trie = ItemTrie(sequences, vocab_size=vocab)
    torch.manual_seed(0)
    # a wide init makes the random model opinionated, so item scores are rarely near-tied
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        initializer_range=0.2,
        bos_token_id=2,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    model = LlamaForCausalLM(config).eval()
    # a saved sampling default must not leak into ranking
    model.generation_config.do_sample = True
    model.generation_config.temperature = 5.0
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, TEXT_VOCAB, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]
    # matrices this small run far faster on one thread than split over busy shared cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield model, trie, sequences, prompts
    torch.set_num_threads(threads)


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_left(prompts, PAD)


@torch.no_grad()
def teacher_forced_scores(model, prompt: list[int], id_tokens: np.ndarray, softmax: str = "ids") -> list[float]:
    """Sum of log-probs of each ID's tokens after the (unpadded) prompt: plain forwards, no cache.

    ``softmax="ids"``: each step's log-softmax over the code tokens only; ``"vocabulary"``: over all tokens.
    """
    ids = torch.cat([torch.tensor(prompt).expand(len(id_tokens), -1), torch.as_tensor(id_tokens)], dim=1)
    logits = model(input_ids=ids).logits.float()
    if softmax == "ids":
        logits[..., :TEXT_VOCAB] = float("-inf")
    logp = torch.log_softmax(logits, dim=-1)
    depth = id_tokens.shape[1]
    positions = torch.arange(len(prompt) - 1, len(prompt) + depth - 1)
    picked = logp[:, positions].gather(2, torch.as_tensor(id_tokens).unsqueeze(2)).squeeze(2)
    return picked.sum(1).tolist()


def assert_same_ranking(got, want, tie: float = 1e-5, atol: float = 1e-4):
    """Same items in the same order, except where neighbouring scores are within ``tie``."""
    assert len(got) == len(want)
    got_s = np.array([s for _, s in got])
    want_s = np.array([s for _, s in want])
    np.testing.assert_allclose(got_s, want_s, atol=atol)
    for pos, ((gi, gs), (wi, ws)) in enumerate(zip(got, want)):
        if gi != wi:
            # a swap is only acceptable between (near-)tied items
            assert abs(gs - ws) < tie, f"rank {pos}: item {gi} ({gs}) vs {wi} ({ws})"
    tied_tail = abs(got_s[-1] - want_s[-1]) < tie
    if not tied_tail:
        assert {i for i, _ in got} == {i for i, _ in want}


@pytest.mark.parametrize("softmax", ["ids", "vocabulary"])
def test_items_are_real_distinct_and_scores_exact(setup, softmax):
    model, trie, sequences, prompts = setup
    ids, mask = left_pad(prompts)
    ranked = constrained_beam_search(model, ids, mask, trie, num_beams=20, top_k=10, softmax=softmax)
    assert len(ranked) == len(prompts)
    for prompt, row in zip(prompts, ranked):
        assert len(row) == 10
        items = [i for i, _ in row]
        assert len(set(items)) == len(items)
        assert all(0 <= i < trie.n_items for i in items)
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True)
        want = teacher_forced_scores(model, prompt, sequences[items], softmax)
        np.testing.assert_allclose(scores, want, atol=1e-4)


@pytest.mark.parametrize("num_beams,top_k", [(10, 10), (20, 10)])
def test_matches_generate(setup, num_beams, top_k):
    model, trie, _, prompts = setup
    ids, mask = left_pad(prompts)
    fast = constrained_beam_search(model, ids, mask, trie, num_beams=num_beams, top_k=top_k, softmax="vocabulary")
    slow = generate_reference(model, ids, mask, trie, num_beams=num_beams, top_k=top_k, eos_token_id=EOS)
    for got, want in zip(fast, slow):
        assert_same_ranking(got, want)


def test_row_results_do_not_depend_on_the_batch(setup):
    model, trie, _, prompts = setup
    ids, mask = left_pad(prompts)
    together = constrained_beam_search(model, ids, mask, trie, num_beams=10, top_k=10)
    for prompt, row in zip(prompts, together):
        alone = constrained_beam_search(model, *left_pad([prompt]), trie, num_beams=10, top_k=10)[0]
        assert_same_ranking(row, alone)


def test_exclusion(setup):
    model, trie, sequences, prompts = setup
    ids, mask = left_pad(prompts)
    first = constrained_beam_search(model, ids, mask, trie, num_beams=10, top_k=5)
    rng = np.random.default_rng(0)
    keep = sorted(rng.choice(trie.n_items, 3, replace=False).tolist())
    excluded = [
        [i for i, _ in first[0]] + list(range(50)),  # its own top-5 and more
        [i for i in range(trie.n_items) if i not in keep],  # everything but 3 items
        list(range(trie.n_items)),  # everything
    ]
    ex = trie.exclusion(excluded)
    ranked = constrained_beam_search(model, ids, mask, trie, num_beams=10, top_k=5, exclusion=ex, softmax="vocabulary")
    assert len(ranked[0]) == 5 and not {i for i, _ in ranked[0]} & set(excluded[0])
    assert sorted(i for i, _ in ranked[1]) == keep
    assert all(np.isfinite(s) for _, s in ranked[1])
    assert ranked[2] == []
    # scores stay true log-probs (masking must not renormalise)
    want = teacher_forced_scores(model, prompts[1], sequences[[i for i, _ in ranked[1]]], "vocabulary")
    np.testing.assert_allclose([s for _, s in ranked[1]], want, atol=1e-4)
    # the HF path with the same exclusion agrees
    slow = generate_reference(
        model, ids[:2], mask[:2], trie, num_beams=10, top_k=5, eos_token_id=EOS, exclusion=trie.exclusion(excluded[:2])
    )
    for got, want in zip(ranked[:2], slow):
        assert_same_ranking(got, want)


def test_more_beams_than_items(setup):
    model, _, sequences, prompts = setup
    small = ItemTrie(sequences[:7], vocab_size=sequences.max() + 1)
    ids, mask = left_pad(prompts)
    ranked = constrained_beam_search(model, ids, mask, small, num_beams=20, top_k=15)
    for row in ranked:
        assert sorted(i for i, _ in row) == list(range(7))
        assert all(np.isfinite(s) for _, s in row)


def test_rejects_bad_arguments(setup):
    model, trie, _, prompts = setup
    ids, mask = left_pad(prompts)
    with pytest.raises(ValueError, match="top_k"):
        constrained_beam_search(model, ids, mask, trie, num_beams=5, top_k=10)
    with pytest.raises(ValueError, match="left-padded"):
        constrained_beam_search(model, ids, mask.flip(1), trie, num_beams=5, top_k=5)
    timings: dict[str, float] = {}
    constrained_beam_search(model, ids, mask, trie, num_beams=5, top_k=5, timings=timings)
    assert set(timings) == {"prefill", "decode", "mask"} and 0 < timings["mask"] < timings["decode"]


def test_bf16_model_and_autocast(setup):
    model, trie, sequences, prompts = setup
    ids, mask = left_pad(prompts)
    want = constrained_beam_search(model, ids, mask, trie, num_beams=20, top_k=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = constrained_beam_search(model, ids, mask, trie, num_beams=20, top_k=10)
    half = copy.deepcopy(model).to(torch.bfloat16)
    bf16 = constrained_beam_search(half, ids, mask, trie, num_beams=20, top_k=10)
    for prompt, ref, *others in zip(prompts, want, auto, bf16):
        for row in others:
            items = [i for i, _ in row]
            assert len(row) == 10 and len(set(items)) == len(items) and all(0 <= i < trie.n_items for i in items)
            assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)
            # bf16 forwards shift scores a little, not the picture
            np.testing.assert_allclose(
                [s for _, s in row], teacher_forced_scores(model, prompt, sequences[items]), atol=0.2
            )
            assert len(set(items) & {i for i, _ in ref}) >= 7
