"""The natural-language request protocol: a wish that never names the item it should find.

For each sampled test user the request is built from real data about the test target, without
its title: the target's most specific category (genre for films) and, where the items have one,
its brand ("Something in Lab Tapes from 3M?"). Two forms:

``wish``          the wish alone;
``liked_wish``    the user's ``CONVERSATION_ITEMS`` (5) most recent titles, then the wish
                  ("I liked A, B and C. Something in ...?"), in the conversational task's
                  template (:meth:`~genrec.prompts.PromptFormatter.conversation_text`).

A user is skipped when the target has no category and no brand, or when its title would appear
in the request (a leak); the result counts both. Under the cold-start protocol only users with
a warm target are asked (the cold ones have their own table).

Each request is answered four ways, scored by the one metrics module:

``resolved_ids``    titles in the text resolved to items become an ID prompt (the wish is
                    dropped); without any, the text itself is the prompt;
``text_prompt``     the text is the model's prompt (meaningful for runs trained with the
                    ``conversational`` task, which shows such wishes);
``minilm``          the items whose text is nearest to the request's (MiniLM, the model the
                    tokenize stage embeds with): what a user would try first;
``minilm_history``  the same plus the content baseline's history vector
                    (:class:`~genrec.models.content.ContentRecommender`), weighted
                    ``HISTORY_WEIGHT``.

`genrec serve`'s chat route does ``text_prompt`` for a model trained with the ``conversational``
task and ``resolved_ids`` otherwise (:meth:`~genrec.prompts.PromptFormatter.chat_prompt`), as
these rows measured. Results go to RUN/eval/SPLIT_requests.json.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from genrec.data import PreparedDataset
from genrec.decoding.conversation import TitleIndex, normalize, read_conversation
from genrec.decoding.hf import GenerativeRecommender
from genrec.io import atomic_write_json, cache_dir
from genrec.metrics import evaluate_rankings
from genrec.models.content import ContentRecommender
from genrec.precision import autocast, use_bf16
from genrec.prompts import CONVERSATION_ITEMS, PromptFormatter
from genrec.recommender import top_k_by_score
from genrec.tokenization.embeddings import text_embeddings
from genrec.training.setup import category_strings

#: weight of the history's content vector beside the request's in ``minilm_history``
HISTORY_WEIGHT = 0.5
FORMS = ("wish", "liked_wish")
SYSTEMS = ("resolved_ids", "text_prompt", "minilm", "minilm_history")


def wishes(dataset: PreparedDataset) -> list[str]:
    """Per item, what a request may say about it: its category and brand, never its title."""
    cats = category_strings(dataset) or [""] * dataset.n_items
    brands = (
        dataset.items["brand"].fillna("").astype(str).str.strip().tolist()
        if "brand" in dataset.items.columns
        else [""] * dataset.n_items
    )
    out = []
    for cat, brand in zip(cats, brands):
        wish = cat.strip()
        if brand:
            wish = f"{wish} from {brand}" if wish else f"something from {brand}"
        out.append(wish)
    return out


@dataclass
class Requests:
    """The requests of one split: which users were asked, with what text, and who was left out."""

    rows: list[int]  # positions in the split's user list
    texts: dict[str, list[str]]  # per form, one text per asked user
    without_wish: int  # users whose target has no category and no brand
    leaked: int  # users whose target's title would appear in a request
    cold: int  # users with a cold-start target (not asked)


def build_requests(
    dataset: PreparedDataset,
    fmt: PromptFormatter,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    max_users: int = 1000,
    seed: int = 0,
) -> Requests:
    """Both request forms for up to ``max_users`` users of a split (sampled with ``seed``).

    ``fmt`` gives the template and the catalog's titles. Deterministic for a seed.
    """
    catalog = fmt.catalog
    cold = set(dataset.cold_rows())
    wish_of = wishes(dataset)
    rng = random.Random(seed)
    texts: dict[str, list[str]] = {f: [] for f in FORMS}
    kept, leaked, without = [], 0, 0
    for j, target in enumerate(targets):
        if target in cold:
            continue
        if not wish_of[target]:
            without += 1
            continue
        shown = list(histories[j])[-min(fmt.max_history, CONVERSATION_ITEMS) :]
        liked = [catalog.titles[i] for i in shown]
        form_texts = {
            "wish": fmt.conversation_text([], wish_of[target], rng),
            "liked_wish": fmt.conversation_text(liked, wish_of[target], rng),
        }
        title = normalize(catalog.titles[target])
        if title and any(title in normalize(t) for t in form_texts.values()):
            leaked += 1
            continue
        kept.append(j)
        for f in FORMS:
            texts[f].append(form_texts[f])
    if max_users and len(kept) > max_users:
        pick = sorted(random.Random(seed).sample(range(len(kept)), max_users))
        kept = [kept[p] for p in pick]
        texts = {f: [texts[f][p] for p in pick] for f in FORMS}
    return Requests(kept, texts, without, leaked, sum(t in cold for t in targets))


def evaluate_requests(
    run_dir: str | Path,
    split: str = "test",
    k: int = 10,
    num_beams: int = 10,
    batch_size: int = 16,
    max_users: int = 1000,
    seed: int = 0,
    bf16: bool = True,
    progress: bool = True,
) -> dict:
    """Recall/NDCG of every system on both request forms; written to RUN/eval/SPLIT_requests.json."""
    run = Path(run_dir)
    dataset = PreparedDataset.load(run / "data")
    rec = GenerativeRecommender.from_folder(run / "model")
    bf16 = use_bf16(bf16, rec.device)
    fmt, catalog = rec.formatter, rec.catalog
    users, histories, targets = dataset.split_rows(split, 0, seed)
    requests = build_requests(dataset, fmt, histories, targets, max_users, seed)
    kept, texts = requests.rows, requests.texts
    hist = [histories[j] for j in kept]
    tgt = [targets[j] for j in kept]

    ks = tuple(x for x in (5, 10) if x <= k)
    result: dict = {
        "split": split,
        "users": len(kept),
        "users_without_wish": requests.without_wish,
        "users_whose_title_would_leak": requests.leaked,
        "cold_targets_left_out": requests.cold,
        "k": k,
        "num_beams": num_beams,
        "bf16": bf16,
        "history_weight": HISTORY_WEIGHT,
        "examples": {f: texts[f][:3] for f in FORMS},
    }
    index = TitleIndex(catalog)
    model = json.loads((run / "tokenize" / "embedding.json").read_text())["model"]
    vectors = text_embeddings(catalog.texts, model=model, show_progress=False, cache_dir=cache_dir("embeddings"))
    content = ContentRecommender(vectors, max_history=fmt.max_history)
    item_vecs = content.vectors
    history_vecs = torch.nn.functional.normalize(content.user_vectors(hist), dim=-1)
    for form in FORMS:
        request_vecs = torch.from_numpy(text_embeddings(texts[form], model=model, show_progress=False))
        resolved = [read_conversation([{"role": "user", "content": t}], index).liked for t in texts[form]]
        prompts = {
            "resolved_ids": [
                fmt.next_item_prompt(r) if r else fmt.prompt_ids(t) for r, t in zip(resolved, texts[form])
            ],
            "text_prompt": [fmt.prompt_ids(t) for t in texts[form]],
        }
        result[form] = {"history_items_resolved": sum(bool(r) for r in resolved) / max(1, len(resolved))}
        for name in SYSTEMS:
            t0 = time.perf_counter()
            if name in prompts:
                with autocast(bf16, rec.device):
                    ranked = rec.recommend(
                        [], k=k, num_beams=num_beams, batch_size=batch_size, prompts=prompts[name], progress=progress
                    )
                ranked_rows = [[r.index for r in row] for row in ranked]
            else:
                scores = request_vecs @ item_vecs.T
                if name == "minilm_history":
                    scores = scores + HISTORY_WEIGHT * (history_vecs @ item_vecs.T)
                ranked_rows = [[r.index for r in row] for row in top_k_by_score(scores, k, None, None, None)]
            metrics = evaluate_rankings(ranked_rows, tgt, len(catalog), ks=ks)
            metrics["seconds_per_user"] = (time.perf_counter() - t0) / max(1, len(kept))
            result[form][name] = metrics
    atomic_write_json(run / "eval" / f"{split}_requests.json", result)
    return result


def format_requests(result: dict) -> str:
    """Markdown table: systems by request form, Recall@10 / NDCG@10."""
    lines = [
        "| system | " + " | ".join(f"{f} R@10 | {f} N@10" for f in FORMS) + " |",
        "|---" + "|---:" * (2 * len(FORMS)) + "|",
    ]
    for name in SYSTEMS:
        cells = []
        for f in FORMS:
            m = result[f][name]
            cells += [f"{m['recall@10']:.4f}", f"{m['ndcg@10']:.4f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
