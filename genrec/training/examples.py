"""Training examples: which (prompt, answer) pairs one epoch holds.

The prompt format itself lives in :mod:`genrec.prompts`; this module only decides which
histories, targets and catalog items are rendered, and how often.
"""

from __future__ import annotations

import random
from typing import Sequence

from genrec.errors import InputError
from genrec.prompts import TASKS, Example, PromptFormatter

#: How next_item examples are cut from a training sequence (see training_examples).
NEXT_ITEM_EXAMPLES = ("prefixes", "windows")


def training_examples(
    fmt: PromptFormatter,
    train_sequences: Sequence[Sequence[int]],
    weights: dict[str, float],
    seed: int = 0,
    min_history: int = 1,
    next_item_examples: str = "prefixes",
    history_labels: bool = False,
    catalog_items: Sequence[int] | None = None,
) -> list[Example]:
    """All training examples for one epoch, before shuffling.

    ``next_item`` examples come from the training sequences only (the validation
    and test targets, the last two items of each user, never appear), cut in one of
    two ways:

    * ``prefixes``: every prefix (history -> following item), so each transition is
      an answer once; a user with n training items gives n - 1 examples.
    * ``windows``: one example per ``max_history`` items, ending at the user's last
      training item (history = the window before it). Meant for ``history_labels``,
      which labels the ID tokens inside the history too, so one forward pass trains
      every transition of the window, as SASRec does: ~6x fewer, slightly longer
      examples per epoch on Beauty for the same transitions.

    ``conversational`` samples that many per prefix (weight 0.25 -> a quarter as
    many); the text tasks cover each catalog item ``weight`` times (fractions
    sample a subset). ``catalog_items`` limits them to those rows (the warm items of the
    cold-start protocol, whose held-out items no example may show); None is every item.
    """
    unknown = set(weights) - set(TASKS)
    if unknown:
        raise InputError(f"unknown task(s) {sorted(unknown)} in train.tasks", f"tasks are {', '.join(TASKS)}")
    rng = random.Random(seed)
    out: list[Example] = []
    pairs = next_item_pairs(train_sequences, "prefixes", fmt.max_history, min_history)
    answers = (
        pairs
        if next_item_examples == "prefixes"
        else next_item_pairs(train_sequences, next_item_examples, fmt.max_history, min_history)
    )
    w = weights.get("next_item", 1.0)
    for hist, target in _sample(answers, w, rng):
        out.append(fmt.next_item(hist, target, history_labels=history_labels))
    for hist, target in _sample(pairs, weights.get("conversational", 0.0), rng):
        out.append(fmt.conversational(hist, target, rng))
    items = list(range(len(fmt.catalog))) if catalog_items is None else list(catalog_items)
    for item in _sample(items, weights.get("text_to_id", 0.0), rng):
        out.append(fmt.text_to_id(item))
    for item in _sample(items, weights.get("id_to_text", 0.0), rng):
        out.append(fmt.id_to_text(item))
    return out


def next_item_pairs(
    train_sequences: Sequence[Sequence[int]], how: str = "prefixes", span: int = 20, min_history: int = 1
) -> list[tuple[Sequence[int], int]]:
    """(history, target) pairs cut from training sequences (see training_examples).

    ``prefixes``: every prefix and the item after it. ``windows``: one pair per
    ``span`` items, the last one ending at the sequence's last item.
    """
    if how not in NEXT_ITEM_EXAMPLES:
        raise InputError(f"unknown train.next_item_examples {how!r}", f"use one of {', '.join(NEXT_ITEM_EXAMPLES)}")
    if how == "windows":
        return [
            (seq[max(0, t - span) : t], seq[t])
            for seq in train_sequences
            for t in range(len(seq) - 1, min_history - 1, -span)
        ]
    return [(seq[:t], seq[t]) for seq in train_sequences for t in range(min_history, len(seq))]


def _sample(pool: list, weight: float, rng: random.Random) -> list:
    """``weight`` copies of ``pool``: whole copies, then a random fraction."""
    whole, frac = int(weight), weight - int(weight)
    out = pool * whole
    if frac > 0 and pool:
        out += rng.sample(pool, int(round(frac * len(pool))))
    return out
