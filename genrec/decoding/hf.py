"""The generative recommender on the HF backend: exported model + trie-constrained beam search.

Used by training-time validation, `genrec recommend`, `genrec evaluate` and the demo. It
batches users, left-pads their prompts and runs the constrained beam search, so every
returned item exists in the catalog.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from genrec.decoding.beam_search import Softmax, constrained_beam_search, left_pad, position_ids
from genrec.decoding.sampling import DistinctDraws, Sampling, constrained_sample
from genrec.errors import InputError
from genrec.exported import ExportedModel
from genrec.precision import compute_device
from genrec.prompts import PromptFormatter
from genrec.recommender import Recommendation
from genrec.tokenization.catalog import Catalog
from genrec.tokenization.trie import ItemTrie


class GenerativeRecommender:
    """Ranks catalog items for users with a fine-tuned causal LM (a :class:`~genrec.recommender.Recommender`).

    Args:
        model: the causal LM (its vocabulary holds the code tokens).
        formatter: the prompt format bound to the model's tokenizer and the catalog.
        trie: the item trie over the catalog's token ids (built from them when None).
    """

    def __init__(self, model, formatter: PromptFormatter, trie: ItemTrie | None = None):
        self.model = model
        self.formatter = formatter
        self.catalog: Catalog = formatter.catalog
        tok = formatter.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.trie = trie or ItemTrie(self.catalog.token_ids(tok), vocab_size=len(tok))

    @classmethod
    def from_folder(
        cls, folder: str | Path, dtype: torch.dtype = torch.float32, device: str = "auto"
    ) -> "GenerativeRecommender":
        """Load an exported model folder (RUN/model) onto ``device`` (see :func:`genrec.precision.compute_device`)."""
        exported = ExportedModel.load(folder, dtype=dtype)
        return cls(exported.model.to(compute_device(device)), exported.formatter, exported.trie)

    @property
    def device(self) -> torch.device:
        """Where the model runs; prompts are moved there, rankings come back to the CPU."""
        return next(self.model.parameters()).device

    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int = 10,
        *,
        exclude: Sequence[Iterable[int]] | None = None,
        allow: Sequence[Iterable[int]] | None = None,
        progress: bool = False,
        num_beams: int = 20,
        batch_size: int = 16,
        prompts: Sequence[Sequence[int]] | None = None,
        new_items: Sequence[int] | None = None,
        new_item_slots: int = 0,
        softmax: Softmax = "ids",
    ) -> list[list[Recommendation]]:
        """Top-``k`` items for each history (catalog rows), best first.

        Args:
            histories: per user, catalog rows in time order.
            k: items per user (at most ``num_beams``).
            exclude: per user, catalog rows never to return (e.g. the history itself).
            allow: per user, the only catalog rows that may be returned.
            num_beams: beam width.
            batch_size: users decoded together.
            prompts: ready prompt token ids instead of history prompts (e.g. conversational).
            new_items: catalog rows of items the model was never trained on (added after
                training; the cold-start protocol's held-out items).
            new_item_slots: how many of the ``k`` places go to ``new_items``, ranked by
                :meth:`new_item_scores`. The beams almost never reach a new item: its codes
                below the first are a path the model never learned, so its first code is
                the one level of its ID the model's probability still speaks for.
            softmax: each step's log-softmax over the ID tokens (fast, the default) or over the
                whole vocabulary, as the vLLM backend scores (see :mod:`genrec.decoding.beam_search`).
        """
        if k > num_beams:
            raise InputError(
                f"k={k} is larger than the beam width {num_beams} (the catalog holds {len(self.catalog)} items)",
                "raise num_beams or lower k",
            )
        all_prompts = (
            [list(p) for p in prompts]
            if prompts is not None
            else [self.formatter.next_item_prompt(h) for h in histories]
        )
        n = len(all_prompts)
        # users decoded together have prompts of about one length: a batch is left-padded to its
        # longest prompt, and on histories of 1 to max_history items most of a shuffled batch
        # would be padding that the prefill and every beam step attend over
        order = sorted(range(n), key=lambda u: len(all_prompts[u]))
        out: list[list[Recommendation]] = [[] for _ in range(n)]
        bar = tqdm(total=n, desc="recommending", unit="user", disable=not progress)
        for start in range(0, n, batch_size):
            users = order[start : start + batch_size]
            batch_prompts = [all_prompts[u] for u in users]
            ids, mask = (t.to(self.device) for t in left_pad(batch_prompts, self.pad_id))
            banned = self._banned(exclude, allow, users) if exclude is not None or allow is not None else None
            exclusion = self.trie.exclusion([sorted(b) for b in banned]) if banned is not None else None
            ranked = constrained_beam_search(
                self.model, ids, mask, self.trie, num_beams=num_beams, top_k=k, exclusion=exclusion, softmax=softmax
            )
            if new_items and new_item_slots > 0:
                banned = banned or [set() for _ in ranked]
                ranked = self._with_new_items(ranked, batch_prompts, new_items, new_item_slots, k, banned)
            for u, row in zip(users, ranked):
                out[u] = Recommendation.rows(self.catalog, row)
            bar.update(len(users))
        bar.close()
        return out

    def sample(
        self,
        prompt: Sequence[int],
        k: int,
        sampling: Sampling,
        *,
        exclude: Iterable[int] | None = None,
        allow: Iterable[int] | None = None,
    ) -> list[Recommendation]:
        """``k`` distinct items drawn for one prompt (token ids), listed by the draws' scores.

        See :mod:`genrec.decoding.sampling`: each round draws ``2k`` IDs on the trie, and later
        rounds exclude what was already drawn. Seeded draws repeat exactly.
        """
        generator = torch.Generator()
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
        ids, mask = (t.to(self.device) for t in left_pad([list(prompt)], self.pad_id))
        allow_rows = None if allow is None else [list(allow)]
        draws = DistinctDraws(k, exclude or ())
        while not draws.done:
            exclusion = self._exclusion([draws.excluded], allow_rows, [0])
            draws.add(
                constrained_sample(
                    self.model, ids, mask, self.trie, 2 * k, sampling, exclusion=exclusion, generator=generator
                )[0]
            )
        return Recommendation.rows(self.catalog, draws.ranking())

    @torch.inference_mode()
    def new_item_scores(self, prompts: Sequence[Sequence[int]], items: Sequence[int]) -> torch.Tensor:
        """``(len(prompts), len(items))`` back-off scores of items the model was never trained on.

        log P(the item's first code | prompt) - log(catalog items under that first code): the
        model's probability of the item's region, shared evenly by the items in it (what an
        item there gets on average, not what the best one gets). The codes below are a path the
        model never learned; asking it about the second code too ranked new items worse on the
        demo set (it prefers the second codes of the items it was trained on).
        """
        first = self.trie.sequences[:, 0]  # each item's first ID token
        rows = torch.as_tensor(list(items), dtype=torch.long)
        _, inverse, counts = torch.unique(first, return_inverse=True, return_counts=True)
        return self._next_logprobs(prompts)[:, first[rows]] - counts[inverse[rows]].float().log()

    def _next_logprobs(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Log-probabilities of the next token after each prompt: ``(len(prompts), vocab)``."""
        ids, mask = (t.to(self.device) for t in left_pad(prompts, self.pad_id))
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=1
        ).logits
        return torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()

    def _with_new_items(self, ranked, prompts, new_items, slots: int, k: int, banned: list[set[int]]) -> list:
        """Each row's ranking with its last ``slots`` places given to the best-scored new items."""
        new = list(new_items)
        new_set = set(new)
        scores = self.new_item_scores(prompts, new)
        out = []
        for row, ranking in enumerate(ranked):
            order = torch.argsort(scores[row], descending=True, stable=True).tolist()  # ties: catalog order
            picks = [(new[j], float(scores[row, j])) for j in order if new[j] not in banned[row]][:slots]
            kept = [(i, s) for i, s in ranking if i not in new_set][: k - len(picks)]
            out.append(sorted(kept + picks, key=lambda p: -p[1]))
        return out

    def _exclusion(self, exclude, allow, users: list[int]):
        """The trie exclusion of ``users``: their excluded rows plus everything outside their allow-list."""
        if exclude is None and allow is None:
            return None
        return self.trie.exclusion([sorted(b) for b in self._banned(exclude, allow, users)])

    def _banned(self, exclude, allow, users: list[int]) -> list[set[int]]:
        """Per user of ``users``: its excluded rows plus everything outside its allow-list."""
        everything = set(range(len(self.catalog))) if allow is not None else set()
        rows = []
        for u in users:
            banned = set(exclude[u]) if exclude is not None and exclude[u] is not None else set()
            if allow is not None and allow[u] is not None:
                banned |= everything - set(allow[u])
            rows.append(banned)
        return rows
