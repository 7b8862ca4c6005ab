"""Conversational evaluation: the test history given as text instead of IDs.

Each test user's ``CONVERSATION_ITEMS`` (5) most recent items are written the way a
person would type them, with the conversational task's template ("I liked A, B and C.
What should I try next?"), and ranked four ways:

``id_prompt_full``   the usual prompt: the whole shown history as semantic IDs;
``id_prompt``        the same 5 items as semantic IDs (the reference for the text rows);
``text_resolved``    the chat path of `genrec serve`: titles in the text are resolved to
                     catalog items (:class:`TitleIndex`), which become an ID history;
``text_prompt``      the text itself is the model's prompt (meaningful for runs trained
                     with the ``conversational`` task).

It also reports how many history items the title resolution recovered. Results go to
RUN/eval/SPLIT_conversational.json.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path


from genrec.data import PreparedDataset
from genrec.data import split_rows
from genrec.metrics import evaluate_rankings
from genrec.precision import autocast, use_bf16
from genrec.decoding.conversation import TitleIndex, read_conversation
from genrec.decoding.hf import GenerativeRecommender
from genrec.prompts import CONVERSATION_ITEMS


def evaluate_conversational(
    run_dir: str | Path,
    split: str = "test",
    k: int = 10,
    num_beams: int = 10,
    batch_size: int = 16,
    max_users: int = 300,
    seed: int = 0,
    bf16: bool = True,
    progress: bool = True,
) -> dict:
    """Recall/NDCG of ID prompts vs the same histories given as text; written to RUN/eval."""
    run = Path(run_dir)
    dataset = PreparedDataset.load(run / "data")
    rec = GenerativeRecommender.from_folder(run / "model")
    bf16 = use_bf16(bf16, rec.device)
    fmt, catalog = rec.formatter, rec.catalog
    users, histories, targets = split_rows(dataset, split, max_users, seed)
    shown = [list(h)[-min(fmt.max_history, CONVERSATION_ITEMS) :] for h in histories]
    texts = [
        fmt.conversation_text([catalog.titles[i] for i in h], None, random.Random(seed + n))
        for n, h in enumerate(shown)
    ]

    index = TitleIndex(catalog)
    resolved = [read_conversation([{"role": "user", "content": t}], index).liked for t in texts]
    recovered = sum(len(set(r) & set(h)) for r, h in zip(resolved, shown))
    total = sum(len(set(h)) for h in shown)

    ks = tuple(x for x in (5, 10) if x <= k)
    result: dict = {
        "split": split,
        "users": len(users),
        "k": k,
        "num_beams": num_beams,
        "bf16": bf16,
        "history_items_resolved": recovered / max(1, total),
        "users_with_no_title_resolved": sum(not r for r in resolved) / max(1, len(users)),
        "example_text": texts[0],
    }
    prompts = {
        "id_prompt_full": [fmt.next_item_prompt(h) for h in histories],
        "id_prompt": [fmt.next_item_prompt(h) for h in shown],
        # a user whose titles all fail to resolve still gets an answer: from the text itself
        "text_resolved": [fmt.next_item_prompt(r) if r else fmt.prompt_ids(t) for r, t in zip(resolved, texts)],
        "text_prompt": [fmt.prompt_ids(t) for t in texts],
    }
    for name, plist in prompts.items():
        t0 = time.perf_counter()
        with autocast(bf16, rec.device):
            ranked = rec.recommend(
                [], k=k, num_beams=num_beams, batch_size=batch_size, prompts=plist, progress=progress
            )
        metrics = evaluate_rankings([[r.index for r in row] for row in ranked], targets, len(catalog), ks=ks)
        metrics["seconds_per_user"] = (time.perf_counter() - t0) / max(1, len(users))
        result[name] = metrics
    out = run / "eval"
    out.mkdir(exist_ok=True)
    (out / f"{split}_conversational.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
