"""Trie-constrained beam search over semantic IDs (the HF backend's decoder).

An item is a fixed number of code tokens (``trie.depth``), so decoding is a
fixed-depth beam search in which every step may only take tokens that keep the
beam on a path to some catalog item. Compared with ``model.generate`` plus a
``prefix_allowed_tokens_fn`` (kept here as :func:`generate_reference`, for tests
and the benchmark), :func:`constrained_beam_search`:

* prefills each prompt once and copies the KV cache per beam afterwards, instead
  of running the prompt ``num_beams`` times;
* builds the constraint mask for all beams with a few tensor ops
  (:meth:`ItemTrie.allowed_mask`), instead of a Python callback per beam per step;
* never touches ``model.generation_config``, so a sampling default saved with a
  model cannot leak into ranking;
* handles exclusions (seen items, allow-lists) inside the trie walk, and returns
  fewer than ``top_k`` items rather than ``-inf`` junk when fewer are reachable.

Scores are sums of the model's log-probabilities of the ID tokens. ``softmax="ids"`` (the
default) takes each step's log-softmax over the ID tokens only: the model runs without its
output head and only the head's ID-token rows are applied, because on a compact model the
head over a 49k-token vocabulary and its log-sum-exp are most of a decoding step
(`bench/beam_search.py` measures it), while a trained model puts almost no mass outside the
ID tokens at an answer position. ``softmax="vocabulary"`` normalises over the full vocabulary,
*before* masking: the quantity HF beam search reports with ``length_penalty=0``
(:func:`generate_reference` ranks the same).
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator, Literal, MutableMapping, Sequence

import torch

from genrec.tokenization.trie import Exclusion, ItemTrie

#: A ranked list for one request row: (item index into the trie / catalog, score), best first.
Ranking = list[tuple[int, float]]

#: Below this a `generate` beam score means "no valid continuation" (HF uses -1e9 there).
_DEAD_SCORE = -1e8


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (input_ids, attention_mask): every prompt ends at the last column."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding: the first real token of every row is position 0."""
    pos = attention_mask.long().cumsum(-1) - 1
    # pad slots get any valid position (they are masked out); 1 mirrors what `generate` does
    return pos.masked_fill(attention_mask == 0, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _timed(timings: MutableMapping[str, float] | None, key: str, device: torch.device) -> Iterator[None]:
    """Add the block's seconds to ``timings[key]`` (nothing when ``timings`` is None)."""
    if timings is None:
        yield
        return
    _sync(device)
    t0 = time.perf_counter()
    yield
    _sync(device)
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


#: Over which tokens each step's log-probabilities are normalised (see the module doc).
Softmax = Literal["ids", "vocabulary"]


def _id_logits(model, lo: int, hi: int):
    """A function from final hidden states to the output head's logits of token ids ``lo..hi-1``.

    None when the head is not a plain linear layer (then the full logits are computed and sliced).
    """
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return None
    weight = head.weight[lo:hi]
    bias = head.bias[lo:hi] if head.bias is not None else None
    return lambda hidden: torch.nn.functional.linear(hidden, weight, bias)


def _check_inputs(input_ids, attention_mask, num_beams: int, top_k: int, exclusion: Exclusion | None) -> None:
    if top_k > num_beams:
        raise ValueError(f"top_k={top_k} is larger than num_beams={num_beams}")
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError("input_ids and attention_mask must both be (batch, length)")
    if exclusion is not None and exclusion.n_rows != input_ids.shape[0]:
        raise ValueError(f"exclusion has {exclusion.n_rows} rows for a batch of {input_ids.shape[0]}")
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("prompts must be left-padded (the last column of attention_mask must be 1)")


def _prefill(model, input_ids, attention_mask, trie: ItemTrie, nb: int):
    """Run each prompt once, then give every beam of a row a copy of the row's state.

    Returns (logits of the last position per row, KV cache per beam, attention mask per beam,
    the position of the next token per beam).
    """
    attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=True,
        logits_to_keep=1,
    )  # only the last position's logits are needed
    logits = out.logits[:, -1, :]
    if int(trie.sequences.max()) >= logits.shape[-1]:
        raise ValueError(
            f"the trie uses token ids up to {int(trie.sequences.max())} but the model "
            f"has {logits.shape[-1]} logits; resize the model for the catalog first"
        )
    cache = out.past_key_values
    cache.batch_repeat_interleave(nb)
    attention_mask = attention_mask.repeat_interleave(nb, dim=0)
    # one row of logits per prompt: all beams of a row start from the same state
    return logits, cache, attention_mask, position_ids(attention_mask)[:, -1:] + 1


def _rankings(
    trie: ItemTrie, nodes: torch.Tensor, beam_scores: torch.Tensor, B: int, nb: int, top_k: int
) -> list[Ranking]:
    """The finished beams as per-row (item, score) lists, best first."""
    items = torch.where(nodes >= 0, trie.leaf_item[nodes.clamp(min=0)], torch.full_like(nodes, -1)).view(B, nb)
    scores = beam_scores.float().cpu()
    results: list[Ranking] = []
    for row in range(B):
        live = (items[row] >= 0) & torch.isfinite(scores[row])
        row_items, row_scores = items[row][live].tolist(), scores[row][live].tolist()
        # fixed depth + unique trie paths + distinct (parent, token) picks => distinct items
        assert len(set(row_items)) == len(row_items), "beam search returned an item twice"
        results.append(list(zip(row_items, row_scores))[:top_k])  # topk already sorted them
    return results


@torch.inference_mode()
def constrained_beam_search(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    num_beams: int,
    top_k: int,
    exclusion: Exclusion | None = None,
    timings: MutableMapping[str, float] | None = None,
    softmax: Softmax = "ids",
) -> list[Ranking]:
    """Top-``top_k`` distinct catalog items per prompt, by trie-constrained beam search.

    Args:
        model: a causal LM whose vocabulary holds the trie's token ids (HF or PEFT-wrapped).
        input_ids: (B, T) prompt token ids, LEFT-padded (every prompt ends at column T-1).
        attention_mask: (B, T) 1 on real tokens, 0 on padding.
        trie: the item trie; its ``depth`` is the number of decoding steps.
        num_beams: beams kept per row.
        top_k: items returned per row (``<= num_beams``).
        exclusion: items each row may never receive (rows index ``exclusion``'s rows).
        timings: if given, seconds are added under ``"prefill"``, ``"decode"`` (every step
            after the prefill, including the last selection) and ``"mask"`` (the part of
            ``"decode"`` spent building and applying the trie mask).
        softmax: normalise each step over the ID tokens (``"ids"``, fast) or over the whole
            vocabulary (``"vocabulary"``, what ``generate`` scores); see the module doc.

    Returns:
        Per row, up to ``top_k`` ``(item index, sum of ID-token log-probs)`` sorted by score,
        descending. Fewer when fewer items are reachable (exclusions, tiny catalogs).
    """
    _check_inputs(input_ids, attention_mask, num_beams, top_k, exclusion)
    device = input_ids.device
    B, nb = input_ids.shape[0], num_beams
    with _timed(timings, "prefill", device):
        logits, cache, attention_mask, next_position = _prefill(model, input_ids, attention_mask, trie, nb)
    # only ID tokens can be chosen: scores, masks and the top-k cover their span, not the vocabulary
    lo, hi = trie.token_span
    width = hi - lo
    row_of_beam = torch.arange(B).repeat_interleave(nb)  # on CPU, like the trie
    row_offset = (torch.arange(B, device=device) * nb).unsqueeze(1)
    id_logits = _id_logits(model, lo, hi) if softmax == "ids" else None
    decoder = model.get_decoder() if id_logits is not None else None
    id_only = False  # whether `logits` holds the ID-token columns only (after the first step with `decoder`)
    nodes = torch.zeros(B * nb, dtype=torch.long)  # every beam at the root
    # only beam 0 of each row is live at step 0; the copies start at -inf so that
    # the first top-k does not pick the same token once per copy
    beam_scores = torch.full((B, nb), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    with _timed(timings, "decode", device):
        for step in range(trie.depth):
            # float32: bf16 log-probs would round away the differences that rank items. The
            # log-softmax over the whole vocabulary, taken at the ID tokens only
            if softmax == "ids":
                logprobs = torch.log_softmax((logits if id_only else logits[:, lo:hi]).float(), dim=-1)
            else:
                full = logits.float()
                logprobs = full[:, lo:hi] - torch.logsumexp(full, dim=-1, keepdim=True)
            if step == 0:
                logprobs = logprobs.repeat_interleave(nb, dim=0)  # the prefill gave one row per prompt
            with _timed(timings, "mask", device):
                allowed = trie.allowed_mask(nodes, exclusion, rows=row_of_beam, vocab_size=hi, offset=lo)
                logprobs = logprobs.masked_fill(~allowed.to(device), float("-inf"))
            # best num_beams continuations per row over (beam x token)
            candidates = (logprobs + beam_scores.view(-1, 1)).view(B, nb * width)
            beam_scores, flat = candidates.topk(nb, dim=1)
            parent = (flat // width + row_offset).view(-1)
            tokens = (flat % width + lo).view(-1)
            # dead candidates (-inf) may carry a token that happens to be a trie edge: keep them off the trie
            nodes = trie.step(nodes[parent.cpu()], tokens.cpu())
            nodes[torch.isinf(beam_scores).view(-1).cpu()] = -1
            if step + 1 < trie.depth:
                cache.reorder_cache(parent)
                # all beams of a row share the row's padding, so the mask only grows
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B * nb, 1)], dim=1)
                step_inputs = dict(
                    input_ids=tokens.unsqueeze(1),
                    attention_mask=attention_mask,
                    position_ids=next_position,
                    past_key_values=cache,
                    use_cache=True,
                )
                if decoder is not None:
                    out = decoder(**step_inputs)
                    logits, id_only = id_logits(out.last_hidden_state[:, -1, :]), True
                else:
                    out = model(**step_inputs)
                    logits = out.logits[:, -1, :]
                cache, next_position = out.past_key_values, next_position + 1
        return _rankings(trie, nodes, beam_scores, B, nb, top_k)


@torch.inference_mode()
def generate_reference(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    num_beams: int,
    top_k: int,
    eos_token_id: int,
    exclusion: Exclusion | None = None,
) -> list[Ranking]:
    """The same ranking through ``model.generate`` (slow; for tests and the benchmark).

    Uses HF beam search with a ``prefix_allowed_tokens_fn`` walking the trie one beam
    at a time, ``length_penalty=0`` (scores are plain sums of log-probs) and an
    explicit ``do_sample=False`` in a fresh ``GenerationConfig``, so nothing from the
    model's saved generation settings applies. ``eos_token_id`` is what off-trie
    (dead, ``-inf``) beams are allowed to emit, since HF refuses an empty allow-list.
    """
    from transformers import GenerationConfig

    if top_k > num_beams:
        raise ValueError(f"top_k={top_k} is larger than num_beams={num_beams}")
    width = input_ids.shape[1]
    vocab = model.get_output_embeddings().weight.shape[0]

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        node = trie.node_of(sent[width:].tolist())
        if node < 0:
            return [eos_token_id]
        if exclusion is None:
            tokens = trie.allowed_tokens(sent[width:].tolist())
        else:
            mask = trie.allowed_mask(torch.tensor([node]), exclusion, rows=torch.tensor([batch_id]), vocab_size=vocab)
            tokens = torch.nonzero(mask[0]).flatten().tolist()
        return tokens or [eos_token_id]

    config = GenerationConfig(
        num_beams=num_beams,
        num_return_sequences=top_k,
        max_new_tokens=trie.depth,
        min_new_tokens=0,
        do_sample=False,
        early_stopping=True,
        length_penalty=0.0,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    out = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, generation_config=config, prefix_allowed_tokens_fn=allowed
    )
    seqs = out.sequences[:, width:].cpu().tolist()
    scores = out.sequences_scores.float().cpu().tolist()
    results: list[Ranking] = []
    for row in range(input_ids.shape[0]):
        ranking: Ranking = []
        for j in range(row * top_k, (row + 1) * top_k):
            item = trie.item_of(seqs[j][: trie.depth])
            # HF scores dead beams with a large finite negative (-1e9), not -inf, and may then
            # return the same sequence twice; neither is a real candidate
            if item is not None and scores[j] > _DEAD_SCORE and item not in {i for i, _ in ranking}:
                ranking.append((item, scores[j]))
        results.append(sorted(ranking, key=lambda p: -p[1]))
    return results
