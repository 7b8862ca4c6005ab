"""Preference alignment: S-DPO on the trained model's own constrained beams (`genrec align`).

Next-item training (and distillation) teaches the model to imitate: raise the probability of
the item that came next. It never sees what the model itself gets wrong at decoding time: the
items its beam search ranks above the right one. Preference alignment does, the way
recommendation LLMs are tuned after SFT (S-DPO, Chen et al. 2024; MiniOneRec's RL stage):

1. **Mine.** For each training user, the history before their last training item is decoded by
   the exported model with the same trie-constrained beam search as serving; the top-ranked
   items that are not the next item become the *rejected* answers, the next item the *chosen*.
   The frozen starting model's log-likelihood of every answer is stored with them.
2. **Align.** The softmax DPO loss of one preference, with ``h = beta * (log pi(y|x) -
   log pi_ref(y|x))`` for the chosen ``w`` and rejected ``l_1..l_N``::

       loss = -log sigmoid(-log sum_j exp(h(l_j) - h(w)))

   plus ``sft_weight`` times the chosen answer's cross-entropy. It is :class:`Trainer`'s loop
   (time budget, warm-up and cosine decay, checkpoints, validation keeping the best weights,
   resume) with this loss; the validation before the first step counts, so the aligned
   model replaces the start only if it validates better.

Layout: ``RUN/align/sft_model`` (the starting model, copied once from ``RUN/model``),
``RUN/align/preferences.pt`` (mined preferences and reference log-likelihoods),
``checkpoint/``, ``best/``, ``log.jsonl``, ``state.json``; the result is exported to ``RUN/model``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
from typing import Any

import torch
from tqdm.auto import tqdm

from genrec.config import TRAINING_SECTIONS, GenrecConfig, config_hash
from genrec.decoding.hf import GenerativeRecommender
from genrec.errors import InputError
from genrec.exported import ExportedModel, is_exported
from genrec.io import atomic_write_json
from genrec.precision import autocast, use_bf16
from genrec.prompts import IGNORE_INDEX, Example
from genrec.runs import file_hashes
from genrec.training.checkpoint import CheckpointStore, TrainState
from genrec.training.losses import answer_logprobs, collate, sdpo_loss, to_device
from genrec.training.setup import _add_lora, add_dropout
from genrec.training.trainer import Trainer, TrainerCallback

logger = logging.getLogger(__name__)

PREFERENCES_FILE = "preferences.pt"


class PreferenceTrainer(Trainer):
    """Aligns ``RUN/model`` with S-DPO on its own beams (config section ``align``).

    The ``align`` section's schedule (lr, batch size, epochs, time budget, validation cadence)
    replaces the ``train`` section's for this loop; model and LoRA settings come from ``train``.
    """

    validate_first = True

    def __init__(self, cfg: GenrecConfig, progress: bool = True, callbacks: list[TrainerCallback] | None = None):
        a = cfg.align
        loop = dataclasses.replace(
            cfg.train,
            lr=a.lr,
            batch_size=a.batch_size,
            grad_accum=1,
            epochs=a.epochs,
            max_steps=0,
            max_minutes=a.max_minutes,
            anneal_by_time=bool(a.max_minutes),
            eval_every=a.eval_every,
            save_every=a.eval_every,
            patience=a.patience,
            history_loss=0.0,
            distill_weight=0.0,
            distill_from=None,
        )
        # the mined preferences depend on the trained model's recipe and on the mining settings
        self.preferences_key = f"{config_hash(cfg)}-{a.negatives}-{a.num_beams}-{a.users}"
        super().__init__(dataclasses.replace(cfg, train=loop), progress, callbacks)
        self.acfg = a
        self.dir = self.run / "align"
        self.start_folder = self.dir / "sft_model"
        self.checkpoints = CheckpointStore(self.dir, config_hash(cfg, (*TRAINING_SECTIONS, "align")))

    # -- the starting model ------------------------------------------------------------------
    def _start_model(self) -> ExportedModel:
        """The model alignment starts from: RUN/model as training exported it, kept in RUN/align/sft_model.

        A RUN/model that training exported anew (not aligned, other weights) starts alignment over.
        """
        info = self.run.stage_info("model")
        if not is_exported(self.run / "model"):
            raise InputError(
                f"{self.run / 'model'} holds no trained model to align",
                "run `genrec train CONFIG` first; `genrec align` starts from its RUN/model",
            )
        fresh = "aligned" not in info
        if fresh and is_exported(self.start_folder) and file_hashes(self.start_folder) != info.get("files"):
            logger.info("RUN/model was trained again: alignment starts over from it")
            for name in ("sft_model", "checkpoint", "best", PREFERENCES_FILE, "state.json", "log.jsonl"):
                target = self.dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        if not is_exported(self.start_folder):
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / "sft_model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.run / "model", tmp)
            tmp.rename(self.start_folder)
            atomic_write_json(self.dir / "sft_info.json", info)
        self.start_info = {
            k: v for k, v in json.loads((self.dir / "sft_info.json").read_text()).items() if k != "files"
        }
        return ExportedModel.load(self.start_folder)

    def setup(self) -> None:
        if self.tcfg.num_threads:
            torch.set_num_threads(self.tcfg.num_threads)
        torch.manual_seed(self.cfg.seed)
        self.device = self.training_device()
        self.bf16 = use_bf16(self.tcfg.bf16, self.device)
        start = self._start_model()
        self.tokenizer, self.formatter, self.trie = start.tokenizer, start.formatter, start.trie
        self.code_ids = sorted(start.settings.get("code_token_ids") or self.formatter.code_token_ids)
        self.code_id_tensor = torch.tensor(self.code_ids, dtype=torch.long, device=self.device)
        model = start.model.to(self.device)
        self.preferences = self._preferences(GenerativeRecommender(model, self.formatter, self.trie))
        if self.tcfg.finetune == "full":
            for p in model.parameters():
                p.requires_grad_(True)
        else:
            model = _add_lora(model, self.tcfg, self.code_ids)
        add_dropout(model, self.cfg.model.dropout)
        self.model = self.forward_model = model
        self.examples = self.preferences["examples"]  # one entry per preference: (1 + N) answers
        self.steps_per_epoch = -(-len(self.examples) // self.tcfg.batch_size)
        self.total_steps = max(1, int(round(self.steps_per_epoch * self.tcfg.epochs)))
        _, histories, targets = self.dataset.split_rows("valid", self.tcfg.eval_users, self.cfg.seed)
        self.valid = list(zip(histories, targets))
        self._build_optimizer()
        self._orders = {}

    # -- mining ----------------------------------------------------------------------------
    def _preferences(self, rec: GenerativeRecommender) -> dict[str, Any]:
        """Mined preferences with their reference log-likelihoods (cached in RUN/align)."""
        path = self.dir / PREFERENCES_FILE
        a, key = self.acfg, self.preferences_key
        if path.is_file():
            cached = torch.load(path, weights_only=False)
            if cached.get("config_hash") == key:
                logger.info("preferences: %d from %s", len(cached["examples"]), path)
                return cached
        rows = [(u, row) for u, row in enumerate(self.dataset.train_rows()) if len(row) >= 2]
        if a.users and a.users < len(rows):
            rows = random.Random(self.cfg.seed).sample(rows, a.users)
        if not rows:
            raise InputError("no training user has two training items to mine a preference from", "check the data")
        histories = [row[:-1] for _, row in rows]
        chosen = [row[-1] for _, row in rows]
        k = min(a.num_beams, a.negatives + 1)
        with autocast(self.bf16 and self.cfg.eval.bf16, self.device):
            ranked = rec.recommend(
                histories,
                k=k,
                num_beams=a.num_beams,
                batch_size=self.cfg.eval.batch_size,
                progress=self.progress,
            )
        examples, ranks = [], []
        for h, w, recs in zip(histories, chosen, ranked):
            items = [r.index for r in recs]
            ranks.append(items.index(w) if w in items else -1)
            rejected = [i for i in items if i != w][: a.negatives]
            if len(rejected) < a.negatives:  # a tiny catalog: fewer beams than negatives
                continue
            examples.append([self.formatter.next_item(h, i) for i in [w, *rejected]])
        reference = self._reference(rec.model, examples)
        out = {
            "config_hash": key,
            "examples": examples,
            "reference": reference,
            "chosen_rank": ranks,
        }
        hit = sum(r >= 0 for r in ranks)
        logger.info(
            "preferences: %d users; the next item is in the model's top %d for %d (%.1f%%), first for %d",
            len(examples),
            k,
            hit,
            100 * hit / max(1, len(ranks)),
            sum(r == 0 for r in ranks),
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
        return out

    @torch.no_grad()
    def _reference(self, model, examples: list[list[Example]]) -> torch.Tensor:
        """The starting model's answer log-likelihoods, ``(preferences, 1 + negatives)``."""
        model.eval()
        out = []
        bs = max(1, self.tcfg.batch_size)
        for start in tqdm(range(0, len(examples), bs), desc="reference", disable=not self.progress):
            group = examples[start : start + bs]
            batch = self._batch(group)
            with autocast(self.bf16, self.device):
                lp = answer_logprobs(model, batch)
            out.append(lp.float().view(len(group), -1).cpu())
        return torch.cat(out)

    def _batch(self, group: list[list[Example]]) -> dict:
        """Every answer of the preferences in ``group``, collated on the training device."""
        answers = [ex for pref in group for ex in pref]
        return to_device(collate(answers, self.pad_id, self.tcfg.max_seq_len), self.device)

    def example_length(self, index: int) -> int:
        """A preference's answers share its prompt and are batched together: its longest one."""
        return min(max(len(ex.input_ids) for ex in self.examples[index]), self.tcfg.max_seq_len)

    # -- one step ----------------------------------------------------------------------------
    def train_step(self, state: TrainState) -> tuple[float, int, int, int]:
        idx = self.batch_indices(state.step, 0)
        group = [self.examples[i] for i in idx]
        batch = self._batch(group)
        with autocast(self.bf16, self.device):
            policy = answer_logprobs(self.forward_model, batch).view(len(group), -1)
        reference = self.preferences["reference"][idx].to(self.device)
        loss = self.acfg.preference_weight * sdpo_loss(policy, reference, self.acfg.beta)
        if self.acfg.sft_weight > 0:
            answer_tokens = (batch["labels"] != IGNORE_INDEX).sum(-1).view(len(group), -1)[:, 0]
            loss = loss + self.acfg.sft_weight * (-policy[:, 0] / answer_tokens).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.optimizer.step()
        return loss.detach().item(), int(batch["attention_mask"].sum()), len(group), len(group)

    def export_info(self, state: TrainState) -> dict[str, Any]:
        """Training's record of the starting model, plus what alignment did."""
        ranks = self.preferences["chosen_rank"]
        return {
            **self.start_info,
            "aligned": {
                "method": "sdpo",
                "preferences": len(self.examples),
                "chosen_in_beams": round(sum(r >= 0 for r in ranks) / max(1, len(ranks)), 4),
                "start_valid_ndcg@10": state.evals[0]["ndcg@10"] if state.evals else None,
                "best_valid_ndcg@10": state.best_metric,
                "best_step": state.best_step,
                "steps": state.step,
                "minutes": round(state.minutes, 2),
                "stop_reason": state.stop_reason,
                **dataclasses.asdict(self.acfg),
            },
        }


def align(cfg: GenrecConfig, progress: bool = True) -> TrainState:
    """Run `genrec align` for a config whose run folder holds a trained model."""
    return PreferenceTrainer(cfg, progress=progress).train()
