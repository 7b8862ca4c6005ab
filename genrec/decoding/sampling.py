"""Trie-constrained sampling: items drawn from the model's distribution instead of ranked.

Beam search answers "which items are most likely"; a client that sends ``temperature``
(OpenAI's sampling knob) asks for a draw instead: exploration, diversity, A/B traffic.
Every drawn token is masked to the trie exactly as in beam search, so a sample is always a
catalog item the request may receive (exclusions and allow-lists apply inside the walk).

A sampled item's ``score`` is the log-probability of having drawn its ID: the sum over its
tokens of log-softmax of the logits after the trie mask, the temperature and the top-p cut.
vLLM reports the same quantity (``logprobs_mode="processed_logprobs"``), so both engines
agree on what a sampled score means. It is not comparable with beam-search scores, which
are the model's raw log-probabilities.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from genrec.decoding.beam_search import Ranking, _prefill
from genrec.tokenization.trie import Exclusion, ItemTrie

#: rounds of drawing before a sampled list is returned short (each round excludes what was drawn)
MAX_ROUNDS = 4


@dataclass(frozen=True)
class Sampling:
    """How to draw items (OpenAI's ``temperature``, ``top_p`` and ``seed``).

    Args:
        temperature: > 0; divides the logits (lower: closer to the ranked list).
        top_p: nucleus cut in (0, 1]: draw only among the most likely tokens whose
            probabilities sum to ``top_p``.
        seed: makes the draw reproducible on one engine (None: a fresh draw every time).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` with every token outside each row's top-p nucleus set to -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # a token stays when the mass before it is below top_p: the most likely token always stays
    drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@torch.inference_mode()
def constrained_sample(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    num_samples: int,
    sampling: Sampling,
    exclusion: Exclusion | None = None,
    generator: torch.Generator | None = None,
) -> list[Ranking]:
    """``num_samples`` independent draws per prompt, each a whole catalog item.

    Args are as for :func:`~genrec.decoding.beam_search.constrained_beam_search` (prompts
    LEFT-padded; ``exclusion`` rows index the prompts). Draws may repeat an item.

    Returns:
        Per prompt, ``(item index, log-probability of the draw)`` in draw order; fewer than
        ``num_samples`` when the request left nothing to draw from.
    """
    B, n = input_ids.shape[0], num_samples
    logits, cache, attention_mask, next_position = _prefill(model, input_ids, attention_mask, trie, n)
    rows = torch.arange(B).repeat_interleave(n)
    nodes = torch.zeros(B * n, dtype=torch.long)
    scores = torch.zeros(B * n)
    for step in range(trie.depth):
        allowed = trie.allowed_mask(nodes, exclusion, rows=rows, vocab_size=logits.shape[-1])
        dead = ~allowed.any(dim=-1)
        allowed[dead, 0] = True  # a placeholder draw, discarded below: keeps multinomial defined
        masked = (logits.float().cpu() / sampling.temperature).masked_fill(~allowed, float("-inf"))
        logprobs = _nucleus(masked, sampling.top_p).log_softmax(dim=-1)
        tokens = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(1)
        scores += logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
        nodes = trie.step(nodes, tokens)
        nodes[dead] = -1
        if step + 1 < trie.depth:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B * n, 1)], dim=1)
            out = model(
                input_ids=tokens.to(input_ids.device).unsqueeze(1),
                attention_mask=attention_mask,
                position_ids=next_position,
                past_key_values=cache,
                use_cache=True,
            )
            cache, logits, next_position = out.past_key_values, out.logits[:, -1, :], next_position + 1
    items = torch.where(nodes >= 0, trie.leaf_item[nodes.clamp(min=0)], torch.full_like(nodes, -1)).view(B, n)
    scores = scores.view(B, n)
    return [[(int(i), float(s)) for i, s in zip(items[b].tolist(), scores[b].tolist()) if i >= 0] for b in range(B)]


class DistinctDraws:
    """Rounds of draws, gathered into up to ``k`` distinct items; no I/O (as ``ItemBeamSearch``).

    Use: while not ``done``: draw a round (``2k`` is a good size) that avoids ``excluded``
    and pass it to ``add``; then read ``ranking()``. Each round excludes what earlier rounds
    drew, so a peaked distribution still yields ``k`` items in a few rounds.
    """

    def __init__(self, k: int, exclude: Iterable[int] = ()):
        self.k = k
        self._excluded = {int(i) for i in exclude}
        self._got: dict[int, float] = {}
        self.rounds = 0

    @property
    def done(self) -> bool:
        return len(self._got) >= self.k or self.rounds >= MAX_ROUNDS

    @property
    def excluded(self) -> list[int]:
        """Rows the next round must not draw: the request's exclusions and every item drawn so far."""
        return sorted(self._excluded | set(self._got))

    def add(self, drawn: Ranking) -> None:
        for item, score in drawn:
            if item not in self._got and item not in self._excluded and len(self._got) < self.k:
                self._got[item] = score
        self.rounds += 1

    def ranking(self) -> Ranking:
        """The distinct items drawn, best score first."""
        return sorted(self._got.items(), key=lambda pair: (-pair[1], pair[0]))
