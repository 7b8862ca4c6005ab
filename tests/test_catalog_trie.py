"""Catalog, code tokens and the item trie, on a real tokenizer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from genrec.errors import GenrecError
from genrec.tokenization.catalog import Catalog, code_token, parse_sid
from genrec.tokenization.trie import ItemTrie
from genrec.tokenization.vocab import add_semantic_id_tokens, resize_model_for_catalog


def random_catalog(n: int = 300, sizes=(8, 8, 6, 4), seed: int = 0) -> Catalog:
    rng = np.random.default_rng(seed)
    all_codes = np.array(list(itertools.product(*[range(s) for s in sizes])))
    codes = all_codes[rng.choice(len(all_codes), n, replace=False)]
    titles = [f"Item number {i}" for i in range(n)]
    texts = [f"Item number {i}, a {'red' if i % 2 else 'blue'} thing" for i in range(n)]
    return Catalog([f"it{i}" for i in range(n)], codes, list(sizes), titles, texts)


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def test_sid_strings_round_trip():
    cat = random_catalog()
    assert code_token(2, 201) == "<c_201>"
    assert parse_sid("<a_12><b_7><c_201>") == (12, 7, 201)
    for bad in ["<b_1><a_2>", "<a_1>x", "", "<a_1> <b_2>"]:
        with pytest.raises(ValueError):
            parse_sid(bad)
    for i in range(len(cat)):
        assert cat.index_of_sid(cat.sid(i)) == i
    assert cat.index_of_sid("<a_0><b_0>") is None


def test_catalog_rejects_duplicates_and_out_of_range():
    with pytest.raises(ValueError, match="share a semantic ID"):
        Catalog(["x", "y"], np.array([[0, 1], [0, 1]]), [2, 2], ["", ""], ["", ""])
    with pytest.raises(ValueError, match="outside"):
        Catalog(["x"], np.array([[0, 2]]), [2, 2], [""], [""])


def test_catalog_save_load(tmp_path):
    cat = random_catalog()
    cat.save(tmp_path)
    back = Catalog.load(tmp_path)
    assert back.item_ids == cat.item_ids and back.titles == cat.titles and back.texts == cat.texts
    assert np.array_equal(back.codes, cat.codes) and back.level_sizes == cat.level_sizes
    with pytest.raises(GenrecError, match="genrec tokenize"):
        Catalog.load(tmp_path / "nowhere")


def test_code_tokens_tokenize_whole(tokenizer):
    cat = random_catalog()
    tok = tokenizer
    ids = add_semantic_id_tokens(tok, cat)
    assert len(set(ids)) == len(cat.code_tokens())
    assert add_semantic_id_tokens(tok, cat) == ids  # idempotent
    table = cat.token_ids(tok)
    for i in [0, 17, 299]:
        enc = tok(cat.sid(i), add_special_tokens=False)["input_ids"]
        assert enc == table[i].tolist()
        assert tok.decode(enc) == cat.sid(i)


def test_trie_accepts_exactly_the_catalog(tokenizer):
    cat = random_catalog()
    table = cat.token_ids(tokenizer) if add_semantic_id_tokens(tokenizer, cat) else None
    trie = ItemTrie(table, vocab_size=len(tokenizer))
    # every item is accepted and maps back to itself
    for i in range(len(cat)):
        assert trie.item_of(table[i].tolist()) == i
    # every other code combination of the same levels is rejected
    level_ids = [
        sorted(
            set(table[:, d].tolist())
            | set(tokenizer.convert_tokens_to_ids([code_token(d, c) for c in range(cat.level_sizes[d])]))
        )
        for d in range(cat.depth)
    ]
    members = {tuple(r) for r in table.tolist()}
    accepted = sum(trie.item_of(list(seq)) is not None for seq in itertools.product(*level_ids))
    assert accepted == len(members) == len(cat)
    # off-trie prefixes allow nothing
    assert trie.allowed_tokens([0]) == []


def test_batched_mask_matches_single_prefix_walk():
    cat = random_catalog(n=500, sizes=(10, 10, 10, 3), seed=1)
    seqs = cat.codes + np.array([100, 200, 300, 400])  # distinct token ids per level
    trie = ItemTrie(seqs, vocab_size=500)
    rng = np.random.default_rng(0)
    prefixes = []
    for _ in range(200):
        i = rng.integers(len(cat))
        prefixes.append(seqs[i, : rng.integers(0, 4)].tolist())
    prefixes.append([999 % 500])  # an invalid first token
    nodes = torch.tensor([trie.node_of(p) for p in prefixes])
    mask = trie.allowed_mask(nodes)
    for row, p in enumerate(prefixes):
        assert torch.nonzero(mask[row]).flatten().tolist() == sorted(trie.allowed_tokens(p))
    # step agrees with node_of
    toks = torch.tensor([seqs[0, 0]] * len(prefixes))
    stepped = trie.step(torch.zeros(len(prefixes), dtype=torch.long), toks)
    assert (stepped == trie.node_of([seqs[0, 0]])).all()


def test_exclusion_never_leads_into_dead_subtrees():
    # two items under one prefix; excluding both must close the prefix itself
    seqs = np.array([[1, 5, 8], [1, 5, 9], [1, 6, 8], [2, 5, 8]])
    trie = ItemTrie(seqs, vocab_size=10)
    ex = trie.exclusion([[0, 1], [3], []])
    rows = torch.tensor([0, 0, 1, 2])
    nodes = torch.tensor([0, trie.node_of([1]), 0, trie.node_of([1, 5])])
    mask = trie.allowed_mask(nodes, ex, rows=rows)
    allowed = [torch.nonzero(r).flatten().tolist() for r in mask]
    assert allowed == [[1, 2], [6], [1], [8, 9]]
    # allow-lists are exclusions of everything else
    only = trie.allow_only([[2]])
    mask = trie.allowed_mask(torch.tensor([0]), only, rows=torch.tensor([0]))
    assert torch.nonzero(mask[0]).flatten().tolist() == [1]


def test_exclusion_matches_brute_force():
    cat = random_catalog(n=400, sizes=(6, 6, 6, 4), seed=3)
    seqs = cat.codes + np.array([0, 10, 20, 30])
    trie = ItemTrie(seqs, vocab_size=40)
    rng = np.random.default_rng(1)
    excluded = [rng.choice(400, size=rng.integers(0, 200), replace=False).tolist() for _ in range(5)]
    ex = trie.exclusion(excluded)
    for row, exc in enumerate(excluded):
        keep = [s for i, s in enumerate(seqs.tolist()) if i not in set(exc)]
        for depth in range(4):
            prefixes = {tuple(s[:depth]) for s in seqs.tolist()}
            for p in prefixes:
                node = trie.node_of(p)
                got = (
                    torch.nonzero(trie.allowed_mask(torch.tensor([node]), ex, rows=torch.tensor([row]))[0])
                    .flatten()
                    .tolist()
                )
                want = sorted({s[depth] for s in keep if tuple(s[:depth]) == p})
                assert got == want


def test_trie_save_load(tmp_path):
    seqs = random_catalog().codes
    trie = ItemTrie(seqs, vocab_size=20)
    trie.save(tmp_path)
    back = ItemTrie.load(tmp_path)
    assert back.n_nodes == trie.n_nodes and torch.equal(back.edge_key, trie.edge_key)


def test_new_rows_start_among_existing_ones(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    cat = random_catalog()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    old = model.get_input_embeddings().weight.detach().clone()
    ids = resize_model_for_catalog(model, tok, cat, init="text")
    new = model.get_input_embeddings().weight.detach()
    assert new.shape[0] == len(tok) and torch.equal(new[: old.shape[0]], old)
    rows = new[ids]
    # the new rows sit at the scale of the old ones, not far away
    assert abs(rows.norm(dim=1).mean() / old.norm(dim=1).mean() - 1) < 0.5
    assert torch.isfinite(rows).all()
    # rows of different codes differ
    assert torch.unique(rows, dim=0).shape[0] == len(ids)
