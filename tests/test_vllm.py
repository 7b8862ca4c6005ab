"""The vLLM backend on a trained (tiny) model: same top-K as the HF backend, valid items in every mode."""

from __future__ import annotations

import pytest

from genrec.data import PreparedDataset
from genrec.data import split_rows
from genrec.decoding.hf import GenerativeRecommender
from genrec.tokenization.trie import ItemTrie

pytest.importorskip("vllm")


def _near_tied(a, b, tol: float = 1e-3) -> bool:
    """Same items up to swaps of near-equal scores (fp32 kernels differ between HF and vLLM)."""
    sa, sb = dict(a), dict(b)
    common = set(sa) & set(sb)
    if len(common) < len(sa) - 1:  # at most the last slot may differ, by a near-tie
        return False
    return all(abs(sa[i] - sb[i]) < tol for i in common) and all(abs(x[1] - y[1]) < tol for x, y in zip(a, b))


@pytest.fixture(scope="module")
def hf(trained_demo_run):
    return GenerativeRecommender.from_folder(trained_demo_run / "model")


@pytest.fixture(scope="module")
def vllm_rec(trained_demo_run):
    """One vLLM engine on the trained model for every test here (`genrec recommend --backend vllm`'s recommender)."""
    from genrec.decoding.vllm_backend import VllmRecommender

    rec = VllmRecommender(trained_demo_run / "model")
    yield rec
    rec.close()


@pytest.mark.slow
def test_vllm_backend_ranks_like_hf(trained_demo_run, hf, vllm_rec):
    """The vLLM recommender returns the HF backend's top-10 (fp32, seen items excluded)."""
    _, histories, _ = split_rows(PreparedDataset.load(trained_demo_run / "data"), "test")
    hist = histories[:12]
    ranked = vllm_rec.recommend(hist, k=10, num_beams=10, exclude=hist)
    # vLLM's log-probabilities are normalised over the whole vocabulary
    ref = hf.recommend(hist, k=10, num_beams=10, exclude=hist, softmax="vocabulary")
    for row, want, h in zip(ranked, ref, hist):
        got = [(r.index, r.score) for r in row]
        assert len(got) == 10 and len({i for i, _ in got}) == 10
        assert not {i for i, _ in got} & set(h), "a seen item came back"
        exact = [i for i, _ in got] == [r.index for r in want]
        assert exact or _near_tied(got, [(r.index, r.score) for r in want]), (got, want)
        assert all(abs(s - r.score) < 1e-3 for (_, s), r in zip(got, want) if exact)


@pytest.mark.slow
def test_processor_keeps_greedy_sampling_and_lists_on_the_trie(trained_demo_run, vllm_rec):
    """One engine: greedy and sampled generations spell catalog items; allow-lists hold inside decoding."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    rec = vllm_rec
    trie = ItemTrie.load(trained_demo_run / "model")
    prompt = rec.formatter.next_item_prompt([0, 5, 9])
    eos = rec.formatter.tokenizer.eos_token_id
    greedy = (
        rec.llm.generate(
            [TokensPrompt(prompt_token_ids=prompt)],
            SamplingParams(max_tokens=8, temperature=0.0, extra_args={"genrec": {}}),
            use_tqdm=False,
        )[0]
        .outputs[0]
        .token_ids
    )
    assert trie.item_of(list(greedy[: trie.depth])) is not None and list(greedy[trie.depth :]) == [eos]
    # greedy decoding is a beam search of width 1
    top = rec.rank([prompt], k=1, num_beams=1)[0][0][0]
    assert trie.item_of(list(greedy[: trie.depth])) == top
    sampled = rec.llm.generate(
        [TokensPrompt(prompt_token_ids=prompt)],
        SamplingParams(max_tokens=8, temperature=1.5, n=12, seed=1, extra_args={"genrec": {}}),
        use_tqdm=False,
    )[0].outputs
    items = [trie.item_of(list(o.token_ids[: trie.depth])) for o in sampled]
    assert None not in items and len(set(items)) > 1
    # an allow-list of 7 items: exactly those come back, ranked; an exclusion removes the top one
    allow = [3, 50, 100, 700, 1200, 1800, 2400]
    ranked = rec.rank([prompt], k=7, num_beams=7, allow=[allow])[0]
    assert sorted(i for i, _ in ranked) == allow
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    without_top = rec.rank([prompt], k=6, num_beams=7, allow=[allow], exclude=[[ranked[0][0]]])[0]
    assert [i for i, _ in without_top] == [i for i, _ in ranked[1:]]
    # asking for more items than the list holds gives fewer, never -inf padding or partial IDs
    few = rec.rank([prompt], k=10, num_beams=10, allow=[allow[:3]])[0]
    assert sorted(i for i, _ in few) == allow[:3]


def test_processor_is_installed_as_a_vllm_entry_point(trained_demo_run):
    """vLLM loads entry-point processors into every engine; ours must be one and must import cleanly."""
    from importlib.metadata import entry_points

    from genrec.config import EngineConfig
    from genrec.decoding.vllm_backend import engine_kwargs, processor_entry_point_installed
    from genrec.decoding.vllm_processor import TrieLogitsProcessor

    eps = [ep for ep in entry_points(group="vllm.logits_processors") if ep.name == "genrec_trie"]
    assert eps and eps[0].load() is TrieLogitsProcessor
    assert processor_entry_point_installed()
    # then genrec does not register it a second time (it would mask twice)
    assert engine_kwargs(EngineConfig(), trained_demo_run / "model")["logits_processors"] == []
