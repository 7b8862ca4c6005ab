"""Distillation: soft targets for every ID token from a trained SASRec (``train.distill_from``).

A next-item example trains on hard labels: the one item that came next. A sequential model
that already ranks the whole catalog well (SASRec with full-softmax cross-entropy) knows much
more about each position: which other items were likely too. Its item distribution turns into
a distribution over the semantic-ID codes level by level, exactly as the generative model
decodes them:

* level 0: the teacher's probability mass summed over the items under each first code;
* level ``l`` > 0: the mass of the items that share the true item's first ``l`` codes, summed
  by their code at level ``l`` and renormalised (teacher forcing, as the student is trained).

Beam search over these hierarchies loses almost nothing when the scores are SASRec's own
(`bench/quality_beam_oracle.py` measures it), so what the student lacks is the teacher's
distribution, not a structure that could hold it.

The teacher sees the same items the prompt shows (the history window and, for the answer,
everything before it), one forward pass per batch, in fp32 without gradients.

A teacher can be an ensemble (``train.teacher_seeds``): SASRec fits that differ only in their
seed, whose item distributions are averaged before they become code distributions. Averaging
seeds is the cheapest stronger teacher there is: it ranks better than any one member, and the
student, which matches its teacher to within a few percent, then has more to imitate.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from genrec.config import SASRecConfig
from genrec.data import PreparedDataset
from genrec.errors import InputError
from genrec.io import atomic_folder
from genrec.tokenization.catalog import Catalog, code_token

logger = logging.getLogger(__name__)


def fit_teacher_seeds(
    dataset: PreparedDataset, config: SASRecConfig, count: int, folder: str | Path, progress: bool = True
) -> list[Path]:
    """``count`` SASRec fits with seeds ``config.seed + 1 ..``, saved as ``folder/sasrec-seedS``.

    A fit already saved there is reused, so an interrupted run resumes without refitting.
    """
    from genrec.models.sasrec import SASRecRecommender

    out = []
    for seed in range(config.seed + 1, config.seed + 1 + count):
        target = Path(folder) / f"sasrec-seed{seed}"
        if (target / "sasrec.json").is_file():
            logger.info("teacher: SASRec seed %d from %s", seed, target)
        else:
            logger.info("teacher: fitting SASRec seed %d (ensemble member %d of %d extra)", seed, len(out) + 1, count)
            rec = SASRecRecommender(dataclasses.replace(config, seed=seed)).fit(dataset, progress=progress)
            with atomic_folder(target) as tmp:  # whole folder or nothing: a resume never loads half a model
                rec.save(tmp)
        out.append(target)
    return out


class SASRecTeacher:
    """Per-token code distributions of a saved SASRec over a catalog's semantic IDs.

    Args:
        folders: one folder, or several (an ensemble whose item distributions are averaged),
            written by :meth:`genrec.models.sasrec.SASRecRecommender.save`
            (``RUN/tokenize/collab_sasrec`` of a ``collab_method: sasrec`` run, or a baseline's
            ``RUN/baselines/sasrec``), trained on the same prepared data.
        catalog: the run's catalog (its rows are the teacher's items).
        tokenizer: the student's tokenizer, holding every code token of the catalog.
        code_ids: the sorted code token ids whose logits the student's loss uses; distributions
            come out over these columns.
        temperature: softens (> 1) or sharpens (< 1) the teacher's item distribution.
        mask_seen: give no mass to the items shown before the one predicted (other than that
            item itself), renormalising the rest: the teacher then ranks as it does with seen
            items excluded (``train.distill_mask_seen``).
        device: where the teacher runs and its targets are made (the student's device).
    """

    def __init__(
        self,
        folders: str | Path | Sequence[str | Path],
        catalog: Catalog,
        tokenizer,
        code_ids: torch.Tensor,
        temperature: float = 1.0,
        mask_seen: bool = False,
        device: str | torch.device = "cpu",
    ):
        from genrec.models.sasrec import SASRecEnsemble

        if temperature <= 0:
            raise InputError(f"train.distill_temperature is {temperature}", "use a positive value such as 1.0")
        folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
        self.device = torch.device(device)
        self.ensemble = SASRecEnsemble.load(folders, device=str(self.device))
        if self.ensemble.n_items != len(catalog):
            raise InputError(
                f"the SASRec in {folders[0]} scores {self.ensemble.n_items} items, the catalog has {len(catalog)}",
                "distill from a SASRec trained on this run's prepared data",
            )
        for rec in self.ensemble.members:
            rec.model.requires_grad_(False)
        self.max_len = self.ensemble.max_len
        self.mask_seen = mask_seen
        self.temperature = temperature
        self.depth = catalog.depth
        self.n_items = len(catalog)
        self.codes = torch.as_tensor(np.asarray(catalog.codes), dtype=torch.long, device=self.device)
        self.level_sizes = list(catalog.level_sizes)
        # column of (level, code) among code_ids: the student's code-logit columns
        self.n_cols = len(code_ids)
        self.col = []
        for level, size in enumerate(self.level_sizes):
            ids = torch.tensor(tokenizer.convert_tokens_to_ids([code_token(level, c) for c in range(size)]))
            col = torch.searchsorted(code_ids, ids)
            if (col >= len(code_ids)).any() or (code_ids[col.clamp(max=len(code_ids) - 1)] != ids).any():
                raise InputError(
                    "the student's code rows do not cover the catalog's code tokens",
                    "build the model with build_model for this catalog",
                )
            self.col.append(col.to(self.device))
        # level l > 0: the items under each l-code prefix (padded with n_items, a zero-probability column)
        self.group_of, self.members = [None], [None]
        for level in range(1, self.depth):
            _, group = np.unique(np.asarray(catalog.codes)[:, :level], axis=0, return_inverse=True)
            group = torch.as_tensor(group.ravel(), dtype=torch.long)
            sizes = torch.bincount(group)
            order = torch.argsort(group, stable=True)
            starts = torch.cumsum(sizes, 0) - sizes
            rank = torch.arange(len(group)) - starts[group[order]]
            members = torch.full((len(sizes), int(sizes.max())), self.n_items, dtype=torch.long)
            members[group[order], rank] = order
            self.group_of.append(group.to(self.device))
            self.members.append(members.to(self.device))

    # -- slots ---------------------------------------------------------------------------------
    def slots(
        self, row_ids: Sequence[int], items: Sequence[int], code_set: frozenset[int]
    ) -> list[tuple[int, int, int]]:
        """(token position, item index in ``items``, level) of every ID token that a teacher can score.

        ``row_ids`` are one example's tokens as the model reads them; its code-token runs are,
        from the right, the answer (``items[-1]``) and the shown history items before it. The
        first item has no context, and a run cut by ``max_seq_len`` is skipped.
        """
        runs, start = [], None
        for pos, t in enumerate(row_ids):
            if t in code_set:
                start = pos if start is None else start
            elif start is not None:
                runs.append((start, pos - start))
                start = None
        if start is not None:
            runs.append((start, len(row_ids) - start))
        out = []
        for k, (start, length) in enumerate(runs):
            j = len(items) - (len(runs) - k)
            if j >= 1 and length == self.depth:
                out.extend((start + level, j, level) for level in range(self.depth))
        return out

    # -- targets -------------------------------------------------------------------------------
    @torch.no_grad()
    def targets(
        self, items: Sequence[Sequence[int]], slots: Sequence[Sequence[tuple[int, int, int]]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch rows, token positions, distributions ``(n_slots, len(code_ids))``) for a batch.

        ``items[r]`` are example r's shown items + target (catalog rows) and ``slots[r]`` its
        :meth:`slots`, with positions already in batch columns.
        """
        pairs = sorted({(r, j) for r, sl in enumerate(slots) for _, j, _ in sl})
        if not pairs:
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            return empty, empty, torch.zeros(0, self.n_cols, device=self.device)
        # one causal pass per example over its items before the last: the state after item j-1
        # predicts item j
        ctx = [list(items[r])[:-1] for r in range(len(items))]
        L = max(1, max(len(c) for c in ctx))
        seq = torch.zeros(len(ctx), L, dtype=torch.long)
        for r, c in enumerate(ctx):
            if c:
                seq[r, L - len(c) :] = torch.tensor(c, dtype=torch.long) + 1
        seq = seq[:, -self.max_len :] if L > self.max_len else seq
        L_used = seq.shape[1]
        pair_index = {p: i for i, p in enumerate(pairs)}
        rows = torch.tensor([r for r, _ in pairs])
        pos = torch.tensor([L_used - len(ctx[r]) + (j - 1) for r, j in pairs])
        if (pos < 0).any():
            raise InputError(
                "a history is longer than the teacher's max_len",
                "distill from a SASRec with sasrec.max_len >= data.max_history",
            )
        probs = self.ensemble.item_probs(seq, rows, pos, self.temperature)
        target = torch.tensor([items[r][j] for r, j in pairs], device=self.device)
        if self.mask_seen:
            # the items shown before item j get no teacher mass, except item j itself (a repeat)
            hit = [(n, i) for n, (r, j) in enumerate(pairs) for i in set(items[r][:j]) - {items[r][j]}]
            if hit:
                at = torch.tensor(hit, device=self.device)
                probs[at[:, 0], at[:, 1]] = 0.0
                probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-12)
        # per level, the distribution over that level's codes, for every (example, item) pair
        per_level = []
        M = len(pairs)
        level0 = torch.zeros(M, self.level_sizes[0], device=self.device)
        level0.scatter_add_(1, self.codes[:, 0].expand(M, -1), probs)
        per_level.append(level0)
        padded = torch.cat([probs, probs.new_zeros(M, 1)], dim=1)
        codes_pad = torch.cat([self.codes, self.codes.new_zeros(1, self.depth)], dim=0)
        for level in range(1, self.depth):
            members = self.members[level][self.group_of[level][target]]  # (M, G)
            mass = padded.gather(1, members)
            dist = probs.new_zeros(M, self.level_sizes[level]).scatter_add_(1, codes_pad[members, level], mass)
            per_level.append(dist / dist.sum(1, keepdim=True).clamp_min(1e-12))
        out_rows, out_pos, out = [], [], []
        for r, sl in enumerate(slots):
            for p, j, level in sl:
                out_rows.append(r)
                out_pos.append(p)
                out.append((pair_index[(r, j)], level))
        dists = probs.new_zeros(len(out), self.n_cols)
        for level in range(self.depth):
            idx = [n for n, (_, lv) in enumerate(out) if lv == level]
            if idx:
                src = per_level[level][torch.tensor([out[n][0] for n in idx], device=self.device)]
                dists[torch.tensor(idx, device=self.device)[:, None], self.col[level][None, :]] = src
        return torch.tensor(out_rows, device=self.device), torch.tensor(out_pos, device=self.device), dists
