"""Fine-tuning: teach a causal LM to answer a user's history with the next item's ID.

Fast on a 2-core CPU by design:

* bf16 autocast over fp32 master weights where the CPU runs bf16 natively (:mod:`genrec.precision`);
  on a GPU (``train.device: auto`` finds it) the model, its batches and the teacher move there;
* left padding, so the loss needs logits only at the answer positions (:mod:`.losses`);
* fused AdamW, gradient accumulation, linear warm-up then cosine decay;
* one process, no dataloader workers (a second process on 2 cores slows a step several-fold).

Reproducible and resumable: the example order of epoch ``e`` is a permutation seeded by
``seed + e``; a checkpoint (:mod:`.checkpoint`) holds the trainable weights, optimizer,
scheduler, RNG states, step and validation history, so a killed run restarted with the same
command continues where it stopped and ends as an uninterrupted run would have.

Layout of ``RUN/train/``: ``checkpoint/`` (latest resume point), ``best/`` (trainable weights
with the best validation NDCG@10), ``log.jsonl``, ``state.json``. The merged standalone model
is exported to ``RUN/model/`` (:class:`genrec.exported.ExportedModel`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from genrec.config import GenrecConfig, config_hash
from genrec.data import PreparedDataset
from genrec.decoding.hf import GenerativeRecommender
from genrec.errors import InputError
from genrec.exported import ExportedModel
from genrec.io import atomic_write_json
from genrec.metrics import evaluate_rankings
from genrec.precision import autocast, compute_device, use_bf16
from genrec.prompts import IGNORE_INDEX, Example, PromptFormatter
from genrec.recommender import ranked_indices
from genrec.runs import RunFolder
from genrec.tokenization.catalog import Catalog
from genrec.tokenization.stage import SASREC_DIR, load_catalog
from genrec.tokenization.trie import ItemTrie
from genrec.training.checkpoint import CheckpointStore, TrainState, trainable_state
from genrec.training.distributed import broadcast, dist_info
from genrec.training.examples import training_examples
from genrec.training.losses import answer_loss, collate, lr_lambda, to_device
from genrec.training.setup import build_model, category_strings

logger = logging.getLogger(__name__)


class TrainerCallback:
    """Hooks the training loop calls; subclass and override what you need."""

    def on_log(self, trainer: "Trainer", state: TrainState, record: dict[str, Any]) -> None:
        """Every ``train.log_every`` steps, with step, loss, learning rate and throughput."""

    def on_evaluate(self, trainer: "Trainer", state: TrainState, metrics: dict[str, float]) -> None:
        """After each validation."""

    def on_end(self, trainer: "Trainer", state: TrainState) -> None:
        """When the loop ends (finished, stopped early, or paused by ``stop_after_steps``)."""


class JsonlLog(TrainerCallback):
    """``RUN/train/log.jsonl``: one line per log step and per validation (appended across resumes)."""

    def __init__(self, path: Path):
        self.file = open(path, "a")

    def on_log(self, trainer, state, record):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def on_evaluate(self, trainer, state, metrics):
        self.file.write(json.dumps({"step": state.step, "valid": metrics}) + "\n")
        self.file.flush()

    def on_end(self, trainer, state):
        self.file.close()


class ProgressBar(TrainerCallback):
    """A tqdm bar over the optimizer steps; validations are logged."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, desc="training", unit="step", disable=not enabled)

    def on_step(self) -> None:
        self.bar.update(1)

    def on_log(self, trainer, state, record):
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", ex_s=f"{record['examples_per_s']:.1f}")

    def on_evaluate(self, trainer, state, metrics):
        logger.info("step %d: valid recall@10 %.4f ndcg@10 %.4f", state.step, metrics["recall@10"], metrics["ndcg@10"])

    def on_end(self, trainer, state):
        self.bar.close()


class Trainer:
    """Fine-tunes the configured model on a run's prepared data and catalog.

    Subclasses (:class:`genrec.training.align.PreferenceTrainer`) replace :meth:`setup`,
    :meth:`train_step` and :meth:`export_info` and keep the loop, validation, checkpoints and export.

    Args:
        cfg: the run config (model, train and eval sections are used).
        progress: show progress bars.
        callbacks: extra :class:`TrainerCallback` hooks.
    """

    #: validate before the first step, so that the starting weights are the best until beaten
    validate_first: bool = False

    def __init__(self, cfg: GenrecConfig, progress: bool = True, callbacks: list[TrainerCallback] | None = None):
        self.cfg = cfg
        self.tcfg = cfg.train
        self.run = RunFolder(cfg.run_dir)
        self.dir = self.run / "train"
        self.rank, self.world = dist_info()
        self.progress = progress and self.rank == 0
        self.extra_callbacks = list(callbacks or [])
        # choices and ranges were checked when the config was loaded; what is left depends on files
        self.teacher_folder = self._teacher_folder()  # checked before minutes of setup, not after
        self.item_vector_folder = self._item_vector_folder()
        self.dataset = PreparedDataset.load(self.run / "data")
        self.catalog: Catalog = load_catalog(cfg.run_dir)
        if len(self.catalog) != self.dataset.n_items:
            raise InputError(
                "the catalog and the prepared data disagree on the items",
                "run `genrec tokenize CONFIG` again after `genrec data prepare`",
            )
        self.checkpoints = CheckpointStore(self.dir, config_hash(cfg))

    # -- set-up ----------------------------------------------------------------------------
    def setup(self) -> None:
        """Build the model, the examples of every epoch, the optimizer and the validation users."""
        if self.tcfg.num_threads:
            torch.set_num_threads(self.tcfg.num_threads)  # process-wide: a training process does only this
        torch.manual_seed(self.cfg.seed)
        self.device = self.training_device()
        self.bf16 = use_bf16(self.tcfg.bf16, self.device)
        item_vectors = None
        if self.item_vector_folder is not None:
            from genrec.models.sasrec import SASRecRecommender

            sasrec = SASRecRecommender.load(self.item_vector_folder, device="cpu")  # only its table is read
            item_vectors = sasrec.item_table()
            if len(item_vectors) != len(self.catalog):
                raise InputError(
                    f"the SASRec in {self.item_vector_folder} knows {len(item_vectors)} items, the catalog "
                    f"{len(self.catalog)}",
                    "use a SASRec trained on this run's prepared data (RUN/tokenize/collab_sasrec)",
                )
            logger.info("item tokens: frozen rows from the SASRec item table in %s", self.item_vector_folder)
        self.tokenizer, self.model, self.code_ids = build_model(self.cfg, self.catalog, item_vectors)
        if self.tcfg.finetune != "qlora":  # a 4-bit model is placed by its loader (device_map)
            self.model.to(self.device)
        code_ids = torch.tensor(sorted(self.code_ids), dtype=torch.long)  # build_model's code rows
        self.code_id_tensor = code_ids.to(self.device)
        self.formatter = PromptFormatter(
            self.tokenizer,
            self.catalog,
            max_history=self.cfg.data.max_history,
            with_titles=self.tcfg.with_titles,
            item_tokens=self.tcfg.item_tokens,
            categories=category_strings(self.dataset),
            reads_requests=self.tcfg.tasks.get("conversational", 0.0) > 0,
        )
        self.trie = ItemTrie(self.catalog.token_ids(self.tokenizer), vocab_size=len(self.tokenizer))
        self.train_seqs = self.dataset.train_rows()
        self.examples = training_examples(
            self.formatter,
            self.train_seqs,
            self.tcfg.tasks,
            seed=self.cfg.seed,
            next_item_examples=self.tcfg.next_item_examples,
            history_labels=self.tcfg.history_loss > 0,
            catalog_items=self.dataset.warm_rows() if self.dataset.cold_items else None,
        )
        if not self.examples:
            raise InputError(
                "no training examples (every user has fewer than 4 interactions?)",
                "check the data section (k-core, dataset) or the train.tasks weights",
            )
        self.teacher = None
        if self.tcfg.distill_weight > 0:
            from genrec.training.distill import SASRecTeacher, fit_teacher_seeds

            folders = [self.teacher_folder]
            if self.tcfg.teacher_seeds > 1:
                folders += fit_teacher_seeds(
                    self.dataset, self.cfg.sasrec, self.tcfg.teacher_seeds - 1, self.run / "teachers", self.progress
                )
            self.teacher = SASRecTeacher(
                folders,
                self.catalog,
                self.tokenizer,
                code_ids,
                self.tcfg.distill_temperature,
                self.tcfg.distill_mask_seen,
                device=self.device,
            )
        self.steps_per_epoch = math.ceil(len(self.examples) / self.tcfg.batch_size / self.tcfg.grad_accum)
        self.total_steps = self.tcfg.max_steps or max(1, int(round(self.steps_per_epoch * self.tcfg.epochs)))
        _, histories, targets = self.dataset.split_rows("valid", self.tcfg.eval_users, self.cfg.seed)
        self.valid = list(zip(histories, targets))
        self._build_optimizer()
        self.forward_model = self.model
        if self.world > 1:
            # batch_size is the global batch: each rank takes every world-th example of it, DDP averages
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self._orders: dict[int, list[int]] = {}

    def training_device(self) -> torch.device:
        """``train.device`` (under torchrun, each process takes the GPU of its local rank)."""
        import os

        local_rank = int(os.environ.get("LOCAL_RANK", "0")) if self.world > 1 else None
        return compute_device(self.tcfg.device, local_rank)

    def _teacher_folder(self) -> Path | None:
        """The SASRec to distill from: train.distill_from, else the one that cut the semantic IDs."""
        if self.tcfg.distill_weight <= 0:
            return None
        if self.tcfg.distill_from:
            folder = Path(self.tcfg.distill_from)
            if not (folder / "sasrec.json").is_file():
                raise InputError(
                    f"train.distill_from {folder} holds no saved SASRec",
                    "point it at RUN/tokenize/collab_sasrec (collab_method: sasrec) or at the "
                    "output of `genrec baseline sasrec` (RUN/baselines/sasrec)",
                )
            return folder
        folder = self.run / "tokenize" / SASREC_DIR
        if not (folder / "sasrec.json").is_file():
            raise InputError(
                "train.distill_weight is set but train.distill_from names no teacher, and this run's "
                f"tokenize stage fitted no SASRec ({folder} is missing)",
                "tokenize with tokenize.embedding.collab_method: sasrec, or set train.distill_from to a "
                "saved SASRec folder (`genrec baseline sasrec` writes RUN/baselines/sasrec)",
            )
        return folder

    def _item_vector_folder(self) -> Path | None:
        """The SASRec whose item table becomes the item tokens' rows (train.item_token_rows: teacher)."""
        if self.tcfg.item_token_rows != "teacher":
            return None
        if not self.tcfg.item_tokens:
            raise InputError(
                "train.item_token_rows=teacher sets the rows of item tokens, but train.item_tokens is off",
                "set train.item_tokens=true, or leave item_token_rows at codes",
            )
        if self.tcfg.weight_decay > 0:
            raise InputError(
                "train.item_token_rows=teacher freezes the item rows, but train.weight_decay would still shrink them",
                "set train.weight_decay=0, or use item_token_rows=codes",
            )
        folder = self.teacher_folder or (
            Path(self.tcfg.distill_from) if self.tcfg.distill_from else self.run / "tokenize" / SASREC_DIR
        )
        if not (folder / "sasrec.json").is_file():
            raise InputError(
                f"train.item_token_rows=teacher needs a saved SASRec, and {folder} holds none",
                "tokenize with tokenize.embedding.collab_method: sasrec, or set train.distill_from to a "
                "saved SASRec folder (`genrec baseline sasrec` writes RUN/baselines/sasrec)",
            )
        return folder

    def _build_optimizer(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.tcfg.lr, weight_decay=self.tcfg.weight_decay, fused=True)
        warmup = int(self.tcfg.warmup_ratio * self.total_steps)
        # train.anneal_by_time: the loop sets the share of the time budget spent; the schedule runs
        # on whichever is further along, the steps or the clock (warm-up included)
        self._time_share = 0.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(max(s, self._time_share * self.total_steps), self.total_steps, warmup)
        )

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # -- batches ---------------------------------------------------------------------------
    def _order(self, epoch: int) -> list[int]:
        perm = list(range(len(self.examples)))
        rng = random.Random(self.cfg.seed * 1000003 + epoch)
        rng.shuffle(perm)
        if self.tcfg.group_by_length:
            perm = self._grouped_by_length(perm, rng)
        return perm

    def example_length(self, index: int) -> int:
        """Tokens that example ``index`` puts in a batch, capped at ``train.max_seq_len``: what
        length grouping sorts by. A subclass whose examples are not single sequences says here
        how long one is."""
        return min(len(self.examples[index].input_ids), self.tcfg.max_seq_len)

    def _grouped_by_length(self, perm: list[int], rng: random.Random, megabatch: int = 50) -> list[int]:
        """``perm`` regrouped so that each batch holds examples of similar length (HF's
        ``group_by_length``): runs of ``megabatch`` batches sorted longest first, cut into
        batches again, and the batches shuffled, so an epoch still sees every example once
        and lengths do not come in order."""
        bs = self.tcfg.batch_size * self.tcfg.grad_accum
        batches = []
        for start in range(0, len(perm), megabatch * bs):
            run = sorted(perm[start : start + megabatch * bs], key=self.example_length, reverse=True)
            batches += [run[i : i + bs] for i in range(0, len(run), bs)]
        # a short last batch stays last, so every other batch starts at a multiple of bs
        short = batches.pop() if batches and len(batches[-1]) < bs else []
        rng.shuffle(batches)
        return [i for b in batches for i in b] + short

    def batch_indices(self, step: int, micro: int) -> list[int]:
        """Indices into ``self.examples`` of micro-batch ``micro`` of optimizer step ``step`` on this rank."""
        bs = self.tcfg.batch_size
        flat = (step * self.tcfg.grad_accum + micro) * bs
        epoch, offset = divmod(flat, self.steps_per_epoch * self.tcfg.grad_accum * bs)
        order = self._orders.setdefault(epoch, self._order(epoch))
        idx = order[offset : offset + bs] or order[:bs]
        return idx[self.rank :: self.world]

    def batch_for(self, step: int, micro: int) -> list[Example]:
        """Examples of micro-batch ``micro`` of optimizer step ``step`` (deterministic)."""
        return [self.examples[i] for i in self.batch_indices(step, micro)]

    def distill_targets(self, examples: list[Example], width: int):
        """The teacher's (rows, token columns, code distributions) for a collated batch."""
        max_len, codes = self.tcfg.max_seq_len, self.formatter.code_token_ids
        items, slots = [], []
        for ex in examples:
            seq = ex.input_ids[-max_len:]
            offset = width - len(seq)  # left padding (collate)
            sl = self.teacher.slots(seq, ex.items, codes) if ex.items else []
            items.append(ex.items or [])
            slots.append([(offset + p, j, level) for p, j, level in sl])
        return self.teacher.targets(items, slots)

    def batch(self, examples: list[Example]) -> dict:
        """A collated batch on the training device, with the teacher's targets when distilling."""
        batch = to_device(collate(examples, self.pad_id, self.tcfg.max_seq_len), self.device)
        if self.teacher is not None:
            batch["distill"] = self.distill_targets(examples, batch["input_ids"].shape[1])
        return batch

    # -- one step, one validation ----------------------------------------------------------
    def train_step(self, state: TrainState) -> tuple[float, int, int, int]:
        """One optimizer step (all micro-batches): (loss, tokens, examples, transitions).

        A transition is one (history -> next item) pair the loss trains: each example's answer,
        plus every history item that the history loss predicts from the items before it.
        """
        loss_sum, tokens, n_examples, transitions = 0.0, 0, 0, 0
        for micro in range(self.tcfg.grad_accum):
            batch = self.batch(self.batch_for(state.step, micro))
            with autocast(self.bf16, self.device):
                loss = (
                    answer_loss(
                        self.forward_model, batch, self.code_id_tensor, self.tcfg.history_loss, self.tcfg.distill_weight
                    )
                    / self.tcfg.grad_accum
                )
            loss.backward()
            loss_sum += loss.detach().item()
            tokens += int(batch["attention_mask"].sum())
            n_examples += batch["input_ids"].shape[0]
            transitions += batch["input_ids"].shape[0]
            if self.tcfg.history_loss > 0 and "history_labels" in batch:
                transitions += int((batch["history_labels"] != IGNORE_INDEX).sum()) // self.catalog.depth
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.optimizer.step()
        return loss_sum, tokens, n_examples, transitions

    def evaluate(self) -> dict[str, float]:
        """Validation Recall/NDCG with the constrained beam search on the sampled users."""
        self.model.eval()
        rec = GenerativeRecommender(self.model, self.formatter, self.trie)
        ecfg = self.cfg.eval
        with autocast(self.bf16 and ecfg.bf16, self.device):
            ranked = rec.recommend(
                [h for h, _ in self.valid], k=ecfg.top_k, num_beams=ecfg.num_beams, batch_size=ecfg.batch_size
            )
        self.model.train()
        return evaluate_rankings(ranked_indices(ranked), [t for _, t in self.valid], len(self.catalog), ks=(5, 10))

    def _validate(self, state: TrainState, callbacks: list[TrainerCallback]) -> bool:
        """Validate, keep the best weights; True when early stopping says stop."""
        metrics = broadcast(self.evaluate() if self.rank == 0 else None)
        metrics["step"] = state.step
        metrics["minutes"] = round(state.minutes, 2)  # quality per training minute, beside SASRec's curve
        state.evals.append(metrics)
        for cb in callbacks:
            cb.on_evaluate(self, state, metrics)
        if metrics["ndcg@10"] > state.best_metric:
            state.best_metric, state.best_step, state.evals_without_gain = metrics["ndcg@10"], state.step, 0
            if self.rank == 0:
                self.checkpoints.save_best(self.model)
        else:
            state.evals_without_gain += 1
        if self.tcfg.patience and state.evals_without_gain >= self.tcfg.patience:
            state.stop_reason = f"early stopping after {state.evals_without_gain} evaluations without gain"
            return True
        return False

    # -- the loop ----------------------------------------------------------------------------
    def train(self, stop_after_steps: int | None = None) -> TrainState:
        """Train (resuming if a checkpoint exists), keep the best weights, export RUN/model.

        ``stop_after_steps`` ends the process-equivalent of a kill after that many steps of this
        call (for tests of resuming); nothing is exported then.
        """
        self.setup()
        self.dir.mkdir(parents=True, exist_ok=True)
        state = self.checkpoints.load(self.model, self.optimizer, self.scheduler) or TrainState(
            config_hash=self.checkpoints.config_hash
        )
        if state.finished:
            if self.rank == 0:
                self.export(state)
            return state
        log_name = "log.jsonl" if self.rank == 0 else f"log.rank{self.rank}.jsonl"
        bar = ProgressBar(self.total_steps, state.step, self.progress)
        callbacks = [JsonlLog(self.dir / log_name), bar, *self.extra_callbacks]
        if self.validate_first and state.step == 0 and not state.evals:
            # fine-tuning a trained model: its starting point is the score to beat (and the best so far)
            self._validate(state, callbacks)
        self.model.train()
        t_start = time.perf_counter() - 60 * state.minutes  # a time budget spans resumes
        budget = self.tcfg.max_minutes
        tokens_seen, examples_seen, transitions_seen, t_last, ran = 0, 0, 0, time.perf_counter(), 0
        while state.step < self.total_steps:
            loss, tokens, n_examples, transitions = self.train_step(state)
            tokens_seen, examples_seen = tokens_seen + tokens, examples_seen + n_examples
            transitions_seen += transitions
            # one clock for all ranks: they must agree on the learning rate and on a time-budget stop
            state.minutes = broadcast((time.perf_counter() - t_start) / 60)
            if budget and self.tcfg.anneal_by_time:
                self._time_share = min(1.0, state.minutes / budget)
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            state.step, ran = state.step + 1, ran + 1
            bar.on_step()
            if state.step % self.tcfg.log_every == 0 or state.step == self.total_steps:
                now = time.perf_counter()
                record = {
                    "step": state.step,
                    "loss": round(loss, 5),
                    "lr": self.scheduler.get_last_lr()[0],
                    "examples_per_s": round(examples_seen / max(1e-9, now - t_last), 2),
                    "transitions_per_s": round(transitions_seen / max(1e-9, now - t_last), 2),
                    "tokens": tokens_seen,
                }
                for cb in callbacks:
                    cb.on_log(self, state, record)
                examples_seen, transitions_seen, t_last = 0, 0, now
            if self._step_ends_run(state, budget, callbacks):
                break
            if stop_after_steps is not None and ran >= stop_after_steps:
                for cb in callbacks:
                    cb.on_end(self, state)
                return state
        for cb in callbacks:
            cb.on_end(self, state)
        self._finish(state)
        return state

    def _step_ends_run(self, state: TrainState, budget: float, callbacks: list[TrainerCallback]) -> bool:
        """Validation, stopping rules and checkpointing after a step; True when training is over."""
        out_of_time = bool(budget) and state.minutes >= budget
        last = state.step == self.total_steps or out_of_time
        if (self.tcfg.eval_every and state.step % self.tcfg.eval_every == 0) or last:
            last = self._validate(state, callbacks) or last
        if out_of_time and not state.stop_reason:
            state.stop_reason = f"time budget of {self.tcfg.max_minutes} min reached"
        if last:
            state.finished = True
            state.stop_reason = state.stop_reason or "all steps done"
        if ((self.tcfg.save_every > 0 and state.step % self.tcfg.save_every == 0) or last) and self.rank == 0:
            self.checkpoints.save(state, self.model, self.optimizer, self.scheduler)
        return last

    def _finish(self, state: TrainState) -> None:
        if self.world > 1:
            # each rank records a digest of its weights: they must agree
            weights = trainable_state(self.model).values()
            digest = hashlib.sha256(b"".join(t.float().cpu().numpy().tobytes() for t in weights))
            (self.dir / f"weights.rank{self.rank}.sha256").write_text(digest.hexdigest() + "\n")
            torch.distributed.barrier()
        if self.rank == 0:
            atomic_write_json(self.dir / "state.json", asdict(state))
            self.export(state)

    # -- export ----------------------------------------------------------------------------------
    def export(self, state: TrainState) -> Path:
        """Merge the best weights into a standalone HF folder: RUN/model."""
        self.checkpoints.load_best(self.model)
        model = self.model
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        if getattr(model, "hf_quantizer", None) is not None:
            # QLoRA: the merged layers are still 4-bit; export plain weights so that
            # from_pretrained and vLLM load the folder without bitsandbytes
            model = model.dequantize()
            model.config.quantization_config = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        model.eval()
        with self.run.stage("model", self.export_info(state)) as out:
            ExportedModel.save(
                out, model, self.formatter, self.trie, num_beams=self.cfg.eval.num_beams, code_token_ids=self.code_ids
            )
        return self.run / "model"

    def export_info(self, state: TrainState) -> dict[str, Any]:
        """What the run manifest records about the exported model."""
        return {
            "best_step": state.best_step,
            "best_valid_ndcg@10": state.best_metric,
            "steps": state.step,
            "stop_reason": state.stop_reason,
            "base_model": self.cfg.model.name,
            "finetune": self.tcfg.finetune,
            "bf16": self.bf16,
            "device": self.device.type,
        }
