"""Fine-tuning: teach a causal LM to answer a user's history with the next item's ID.

Fast on a 2-core CPU by design (each measured, see ../shared/notes/stack-facts.md):

* bf16 autocast over fp32 master weights;
* left padding, so every answer ends at the last column and logits are computed
  only for the last ``answer length + 1`` positions (``logits_to_keep``) instead
  of the whole sequence times a 49k vocabulary;
* fused AdamW, gradient accumulation, linear warm-up then cosine decay;
* one process, no dataloader workers (a second process on 2 cores slows a step 7-10x).

Reproducible and resumable: the example order of epoch ``e`` is a permutation
seeded by ``seed + e``; a checkpoint holds the trainable weights, optimizer,
scheduler, RNG states, step and validation history, so a killed run restarted
with the same command continues where it stopped and ends as an uninterrupted
run would have.

Layout of ``RUN/train/``: ``checkpoint/`` (latest resume point), ``best/``
(trainable weights with the best validation NDCG@10), ``log.jsonl``,
``state.json``. The merged standalone model is exported to ``RUN/model/``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from genrec.config import GenrecConfig
from genrec.data import PreparedDataset
from genrec.errors import GenrecError
from genrec.evaluation.metrics import evaluate_rankings
from genrec.precision import autocast, use_bf16
from genrec.runs import RunFolder
from genrec.serving.beam_search import left_pad
from genrec.serving.recommender import PROMPT_FILE, Recommender
from genrec.tokenization.catalog import Catalog
from genrec.tokenization.stage import load_catalog
from genrec.tokenization.trie import ItemTrie
from genrec.training.prompts import (IGNORE_INDEX, NEXT_ITEM_EXAMPLES, TASKS, Example, PromptFormatter,
                                     training_examples)
from genrec.training.setup import build_model, category_strings, check_dropout

FINETUNE_MODES = ("lora", "qlora", "full")


def dist_info() -> tuple[int, int]:
    """(rank, world size) under torchrun / accelerate launch; (0, 1) otherwise."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


def _broadcast(obj):
    """Rank 0's ``obj`` on every rank (no-op in one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -- batches ----------------------------------------------------------------------------------
def collate(examples: list[Example], pad_id: int, max_len: int) -> dict[str, torch.Tensor | int]:
    """Left-padded batch with labels, position ids and how many logits the loss needs.

    ``history_labels`` (when any example has them) is a tensor like ``labels`` for
    the auxiliary loss on the history's ID tokens.
    """
    seqs, labels, hist = [], [], []
    for ex in examples:
        seqs.append(ex.input_ids[-max_len:])
        labels.append(ex.labels[-max_len:])
        hist.append(ex.history_labels[-max_len:] if ex.history_labels is not None else None)
    input_ids, attention_mask = left_pad(seqs, pad_id)
    label_t = _left_padded_labels(labels, input_ids.shape[1])
    # the first answer position of any row decides how many trailing logits are needed
    answer_cols = (label_t != IGNORE_INDEX).any(0).nonzero()
    keep = int(input_ids.shape[1] - answer_cols.min()) + 1 if len(answer_cols) else 1
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
             "labels": label_t, "keep": min(keep, input_ids.shape[1])}
    if any(h is not None for h in hist):
        batch["history_labels"] = _left_padded_labels([h or [] for h in hist], input_ids.shape[1])
    return batch


def _left_padded_labels(rows: list[list[int]], width: int) -> torch.Tensor:
    out = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, lab in enumerate(rows):
        if lab:
            out[r, width - len(lab):] = torch.tensor(lab)
    return out


def answer_loss(model, batch: dict, code_ids: torch.Tensor | None = None,
                history_weight: float = 0.0, distill_weight: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over answer tokens, computing logits only where answers are.

    With ``history_weight`` > 0 and a batch holding ``history_labels``, adds that
    weight times the cross-entropy of each history ID token predicted from the
    tokens before it. Those logits are taken over ``code_ids`` only (rows of the
    output head): an ID inside the history can only be a code token, and the full
    vocabulary at every history position would cost ~6x the model's own forward.

    With ``distill_weight`` > 0 and a batch holding ``distill`` (rows, token positions,
    teacher distributions over ``code_ids``; see :mod:`genrec.training.distill`), adds that
    weight times the soft cross-entropy of the code logits at those tokens against the teacher.
    """
    keep = batch["keep"]
    distill = distill_weight > 0 and "distill" in batch and code_ids is not None
    aux = (history_weight > 0 and "history_labels" in batch and code_ids is not None) or distill
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=keep, use_cache=False,
                output_hidden_states=aux)
    logits = out.logits[:, :-1].float()                      # predicts the last keep-1 tokens
    targets = batch["labels"][:, -(keep - 1):] if keep > 1 else batch["labels"][:, :0]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=IGNORE_INDEX)
    if distill:
        rows, cols, teacher = batch["distill"]
        if len(rows):
            hidden = out.hidden_states[-1][rows, cols - 1]
            log_q = torch.log_softmax(_code_logits(model, hidden, code_ids).float(), dim=-1)
            loss = loss + distill_weight * -(teacher * log_q).sum(-1).mean()
    if aux and history_weight > 0 and "history_labels" in batch:
        rows, cols = (batch["history_labels"] != IGNORE_INDEX).nonzero(as_tuple=True)
        if len(rows):
            hidden = out.hidden_states[-1][rows, cols - 1]      # the final-norm states before each ID token
            code_logits = _code_logits(model, hidden, code_ids).float()
            # position of each target token within code_ids
            target_pos = torch.searchsorted(code_ids, batch["history_labels"][rows, cols])
            loss = loss + history_weight * torch.nn.functional.cross_entropy(code_logits, target_pos)
    return loss


def _code_logits(model, hidden: torch.Tensor, code_ids: torch.Tensor) -> torch.Tensor:
    """Output-head logits of ``hidden`` restricted to the (sorted) ``code_ids``."""
    inner = model.module if hasattr(model, "module") else model       # DDP
    head = inner.get_output_embeddings()
    if isinstance(head, torch.nn.Linear):
        bias = head.bias[code_ids] if head.bias is not None else None
        return torch.nn.functional.linear(hidden, head.weight[code_ids], bias)
    return head(hidden)[:, code_ids]       # wrapped heads (peft): full logits, then the code columns


def lr_lambda(step: float, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 of the peak.

    ``step`` may be fractional: with ``train.anneal_by_time`` the trainer passes the share of
    the time budget spent, in steps, when it is ahead of the step count.
    """
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


# -- state ---------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """What a checkpoint needs besides weights and optimizer."""

    step: int = 0
    best_metric: float = -1.0
    best_step: int = -1
    evals_without_gain: int = 0
    evals: list = field(default_factory=list)
    config_hash: str = ""
    finished: bool = False
    stop_reason: str = ""
    minutes: float = 0.0   # wall-clock minutes of the training loop so far, over all resumes


def _config_hash(cfg: GenrecConfig) -> str:
    # everything that changes the outcome of training (not eval-only knobs)
    d = cfg.to_dict()
    relevant = {k: d[k] for k in ("seed", "data", "tokenize", "model", "train")}
    relevant["train"] = {k: v for k, v in relevant["train"].items()
                         if k not in ("max_minutes", "log_every", "num_threads")}
    # options added later count only when set, so checkpoints made before them still resume
    for path, default in (("train.next_item_examples", "prefixes"), ("train.history_loss", 0.0),
                          ("train.anneal_by_time", False), ("model.dropout", 0.0),
                          ("train.item_tokens", False), ("tokenize.embedding.collab_method", "ppmi"),
                          ("train.distill_from", None), ("train.distill_weight", 0.0),
                          ("train.distill_temperature", 1.0)):
        *parents, key = path.split(".")
        section = relevant
        for p in parents:
            section = section[p]
        if section.get(key) == default:
            section.pop(key)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise GenrecError(f"checkpoint does not match the model (e.g. {missing[0]})",
                          "delete RUN/train to start over, or use the config the checkpoint was made with")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def _save_dir_atomic(target: Path, write) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


# -- the trainer ----------------------------------------------------------------------------------
class Trainer:
    """Fine-tunes the configured model on a run's prepared data and catalog.

    Args:
        cfg: the run config (model, train and eval sections are used).
        progress: show progress bars.
    """

    def __init__(self, cfg: GenrecConfig, progress: bool = True):
        self.cfg = cfg
        self.tcfg = cfg.train
        self.progress = progress
        self.run = RunFolder(cfg.run_dir)
        self.dir = self.run / "train"
        self.rank, self.world = dist_info()
        self.progress = progress and self.rank == 0
        if self.tcfg.finetune not in FINETUNE_MODES:
            raise GenrecError(f"unknown train.finetune {self.tcfg.finetune!r}", f"use one of {', '.join(FINETUNE_MODES)}")
        if self.tcfg.next_item_examples not in NEXT_ITEM_EXAMPLES:
            raise GenrecError(f"unknown train.next_item_examples {self.tcfg.next_item_examples!r}",
                              f"use one of {', '.join(NEXT_ITEM_EXAMPLES)}")
        if self.tcfg.history_loss < 0:
            raise GenrecError(f"train.history_loss is {self.tcfg.history_loss}; it is a weight",
                              "use 0 (off) or a positive weight such as 1.0")
        check_dropout(cfg.model.dropout)
        if self.tcfg.distill_weight < 0:
            raise GenrecError(f"train.distill_weight is {self.tcfg.distill_weight}; it is a weight",
                              "use 0 (off) or a positive weight such as 1.0")
        if self.tcfg.distill_weight > 0 and not self.tcfg.distill_from:
            raise GenrecError("train.distill_weight is set but train.distill_from names no teacher",
                              "set train.distill_from to a saved SASRec folder, e.g. RUN/tokenize/collab_sasrec")
        if self.tcfg.distill_weight > 0 and not (Path(self.tcfg.distill_from) / "sasrec.json").is_file():
            raise GenrecError(f"train.distill_from {self.tcfg.distill_from} holds no saved SASRec",
                              "point it at RUN/tokenize/collab_sasrec (collab_method: sasrec) or at the "
                              "output of `genrec baseline sasrec` (RUN/baselines/sasrec)")
        bad = set(self.tcfg.tasks) - set(TASKS)
        if bad:
            raise GenrecError(f"unknown task {sorted(bad)[0]!r} in train.tasks", f"tasks are {', '.join(TASKS)}")
        self.dataset = PreparedDataset.load(self.run / "data")
        self.catalog: Catalog = load_catalog(cfg.run_dir)
        if len(self.catalog) != self.dataset.n_items:
            raise GenrecError("the catalog and the prepared data disagree on the items",
                              "run `genrec tokenize CONFIG` again after `genrec data prepare`")

    # -- pieces -----------------------------------------------------------------------------
    def _setup(self) -> None:
        if self.tcfg.num_threads:
            torch.set_num_threads(self.tcfg.num_threads)   # process-wide: a training process does only this
        torch.manual_seed(self.cfg.seed)
        self.bf16 = use_bf16(self.tcfg.bf16)  # fp32 on CPUs that only emulate bf16 (many times slower there)
        self.tokenizer, self.model, self.code_ids = build_model(self.cfg, self.catalog)
        self.formatter = PromptFormatter(self.tokenizer, self.catalog, max_history=self.cfg.data.max_history,
                                         with_titles=self.tcfg.with_titles, item_tokens=self.tcfg.item_tokens,
                                         categories=category_strings(self.dataset))
        index = self.dataset.item_index()
        self.train_seqs = [[index[i] for i in s] for s in self.dataset.train_sequences().values()]
        self.examples = training_examples(self.formatter, self.train_seqs, self.tcfg.tasks, seed=self.cfg.seed,
                                          next_item_examples=self.tcfg.next_item_examples,
                                          history_labels=self.tcfg.history_loss > 0)
        self._code_ids_t = torch.tensor(sorted(self.code_ids), dtype=torch.long)  # build_model's code rows
        self.teacher = None
        if self.tcfg.distill_weight > 0:
            from genrec.training.distill import SASRecTeacher
            self.teacher = SASRecTeacher(self.tcfg.distill_from, self.catalog, self.tokenizer, self._code_ids_t,
                                         self.tcfg.distill_temperature)
        if not self.examples:
            raise GenrecError("no training examples (every user has fewer than 4 interactions?)",
                              "check the data section (k-core, dataset) or the train.tasks weights")
        per_epoch = math.ceil(len(self.examples) / self.tcfg.batch_size / self.tcfg.grad_accum)
        self.steps_per_epoch = per_epoch
        self.total_steps = self.tcfg.max_steps or max(1, int(round(per_epoch * self.tcfg.epochs)))
        valid = self.dataset.split("valid")
        rng = random.Random(self.cfg.seed)
        if self.tcfg.eval_users and len(valid) > self.tcfg.eval_users:
            valid = rng.sample(valid, self.tcfg.eval_users)
        self.valid = [([index[i] for i in h], index[t]) for _, h, t in valid]
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.tcfg.lr, weight_decay=self.tcfg.weight_decay,
                                           fused=True)
        warmup = int(self.tcfg.warmup_ratio * self.total_steps)
        # train.anneal_by_time: the loop sets the share of the time budget spent; the schedule runs
        # on whichever is further along, the steps or the clock (warm-up included)
        self._time_share = 0.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(max(s, self._time_share * self.total_steps),
                                                self.total_steps, warmup))
        self.trie = ItemTrie(self.catalog.token_ids(self.tokenizer), vocab_size=len(self.tokenizer))
        self.forward_model = self.model
        if self.world > 1:
            # batch_size is the global batch: each rank takes every world-th example of it,
            # DDP averages the gradients
            self.forward_model = torch.nn.parallel.DistributedDataParallel(self.model)

    def _order(self, epoch: int) -> list[int]:
        perm = list(range(len(self.examples)))
        random.Random(self.cfg.seed * 1000003 + epoch).shuffle(perm)
        return perm

    def _batch_for(self, step: int, micro: int) -> list[Example]:
        """Examples of micro-batch ``micro`` of optimizer step ``step`` (deterministic)."""
        bs = self.tcfg.batch_size
        flat = (step * self.tcfg.grad_accum + micro) * bs
        epoch, offset = divmod(flat, self.steps_per_epoch * self.tcfg.grad_accum * bs)
        order = self._orders.setdefault(epoch, self._order(epoch))
        idx = order[offset:offset + bs] or order[:bs]
        return [self.examples[i] for i in idx[self.rank::self.world]]

    def _distill_targets(self, examples: list[Example], width: int):
        """The teacher's (rows, token columns, code distributions) for a collated batch."""
        max_len, codes = self.tcfg.max_seq_len, self.formatter.code_token_ids
        items, slots = [], []
        for ex in examples:
            seq = ex.input_ids[-max_len:]
            offset = width - len(seq)                      # left padding (collate)
            sl = self.teacher.slots(seq, ex.items, codes) if ex.items else []
            items.append(ex.items or [])
            slots.append([(offset + p, j, level) for p, j, level in sl])
        return self.teacher.targets(items, slots)

    def evaluate(self) -> dict[str, float]:
        """Validation Recall/NDCG with the constrained beam search on the sampled users."""
        self.model.eval()
        rec = Recommender(self.model, self.formatter, self.trie)
        ecfg = self.cfg.eval
        with autocast(self.bf16 and ecfg.bf16):
            ranked = rec.recommend([h for h, _ in self.valid], k=ecfg.top_k, num_beams=ecfg.num_beams,
                                   batch_size=ecfg.batch_size)
        self.model.train()
        return evaluate_rankings([[r.index for r in row] for row in ranked], [t for _, t in self.valid],
                                 len(self.catalog), ks=(5, 10))

    # -- checkpoints ---------------------------------------------------------------------------
    def _save_checkpoint(self, state: TrainState) -> None:
        def write(d: Path) -> None:
            torch.save({"weights": trainable_state(self.model), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state()},
                       d / "checkpoint.pt")
            (d / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
        _save_dir_atomic(self.dir / "checkpoint", write)

    def _load_checkpoint(self) -> TrainState | None:
        ck = self.dir / "checkpoint"
        if not (ck / "state.json").is_file():
            return None
        state = TrainState(**json.loads((ck / "state.json").read_text()))
        if state.config_hash != _config_hash(self.cfg):
            raise GenrecError(f"{self.dir} holds a checkpoint made with a different config",
                              "use the same config to resume, or delete RUN/train (or pick a new run_dir)")
        blob = torch.load(ck / "checkpoint.pt", weights_only=False)
        load_trainable_state(self.model, blob["weights"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        return state

    def _save_best(self) -> None:
        _save_dir_atomic(self.dir / "best", lambda d: torch.save(trainable_state(self.model), d / "weights.pt"))

    # -- loop ------------------------------------------------------------------------------------
    def train(self, stop_after_steps: int | None = None) -> TrainState:
        """Train (resuming if a checkpoint exists), keep the best weights, export RUN/model.

        ``stop_after_steps`` ends the process-equivalent of a kill after that many
        steps of this call (for tests of resuming); nothing is exported then.
        """
        self._setup()
        self._orders: dict[int, list[int]] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        state = self._load_checkpoint() or TrainState(config_hash=_config_hash(self.cfg))
        if state.finished:
            if self.rank == 0:
                self.export(state)
            return state
        log = open(self.dir / ("log.jsonl" if self.rank == 0 else f"log.rank{self.rank}.jsonl"), "a")
        self.model.train()
        t_start = time.perf_counter() - 60 * state.minutes   # a time budget spans resumes
        budget = self.tcfg.max_minutes
        anneal_by_time = bool(budget) and self.tcfg.anneal_by_time
        bar = tqdm(total=self.total_steps, initial=state.step, desc="training", unit="step",
                   disable=not self.progress)
        tokens_seen, examples_seen, t_last = 0, 0, time.perf_counter()
        ran = 0
        while state.step < self.total_steps:
            loss_sum = 0.0
            for micro in range(self.tcfg.grad_accum):
                examples = self._batch_for(state.step, micro)
                batch = collate(examples, self.formatter_pad_id, self.tcfg.max_seq_len)
                if self.teacher is not None:
                    batch["distill"] = self._distill_targets(examples, batch["input_ids"].shape[1])
                with autocast(self.bf16):
                    loss = answer_loss(self.forward_model, batch, self._code_ids_t, self.tcfg.history_loss,
                                       self.tcfg.distill_weight) / self.tcfg.grad_accum
                loss.backward()
                loss_sum += loss.detach().item()
                tokens_seen += int(batch["attention_mask"].sum())
                examples_seen += batch["input_ids"].shape[0]
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
            self.optimizer.step()
            # one clock for all ranks: they must agree on the learning rate and on a time-budget stop
            state.minutes = _broadcast((time.perf_counter() - t_start) / 60)
            if anneal_by_time:
                self._time_share = min(1.0, state.minutes / budget)
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            ran += 1
            bar.update(1)
            if state.step % self.tcfg.log_every == 0 or state.step == self.total_steps:
                now = time.perf_counter()
                rate = examples_seen / max(1e-9, now - t_last)
                bar.set_postfix(loss=f"{loss_sum:.3f}", ex_s=f"{rate:.1f}")
                log.write(json.dumps({"step": state.step, "loss": round(loss_sum, 5),
                                      "lr": self.scheduler.get_last_lr()[0], "examples_per_s": round(rate, 2),
                                      "tokens": tokens_seen}) + "\n")
                log.flush()
                examples_seen, t_last = 0, now
            out_of_time = bool(budget) and state.minutes >= budget
            last = state.step == self.total_steps or out_of_time
            if (self.tcfg.eval_every and state.step % self.tcfg.eval_every == 0) or last:
                metrics = _broadcast(self.evaluate() if self.rank == 0 else None)
                metrics["step"] = state.step
                state.evals.append(metrics)
                log.write(json.dumps({"step": state.step, "valid": metrics}) + "\n")
                log.flush()
                bar.write(f"step {state.step}: valid recall@10 {metrics['recall@10']:.4f} "
                          f"ndcg@10 {metrics['ndcg@10']:.4f}")
                if metrics["ndcg@10"] > state.best_metric:
                    state.best_metric, state.best_step, state.evals_without_gain = metrics["ndcg@10"], state.step, 0
                    if self.rank == 0:
                        self._save_best()
                else:
                    state.evals_without_gain += 1
                if self.tcfg.patience and state.evals_without_gain >= self.tcfg.patience:
                    state.stop_reason = f"early stopping after {state.evals_without_gain} evaluations without gain"
                    last = True
            if out_of_time and not state.stop_reason:
                state.stop_reason = f"time budget of {self.tcfg.max_minutes} min reached"
            if last:
                state.finished = True
                state.stop_reason = state.stop_reason or "all steps done"
            if ((self.tcfg.save_every > 0 and state.step % self.tcfg.save_every == 0) or last) and self.rank == 0:
                self._save_checkpoint(state)
            if last:
                break
            if stop_after_steps is not None and ran >= stop_after_steps:
                bar.close()
                log.close()
                return state
        bar.close()
        log.close()
        if self.world > 1:
            # each rank records a digest of its weights: they must agree
            digest = hashlib.sha256(b"".join(t.float().numpy().tobytes() for t in trainable_state(self.model).values()))
            (self.dir / f"weights.rank{self.rank}.sha256").write_text(digest.hexdigest() + "\n")
            torch.distributed.barrier()
        if self.rank == 0:
            (self.dir / "state.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
            self.export(state)
        return state

    @property
    def formatter_pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # -- export ----------------------------------------------------------------------------------
    def export(self, state: TrainState) -> Path:
        """Merge the best weights into a standalone HF folder: RUN/model."""
        if (self.dir / "best" / "weights.pt").is_file():
            load_trainable_state(self.model, torch.load(self.dir / "best" / "weights.pt"))
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
        info = {"best_step": state.best_step, "best_valid_ndcg@10": state.best_metric,
                "steps": state.step, "stop_reason": state.stop_reason, "base_model": self.cfg.model.name,
                "finetune": self.tcfg.finetune, "bf16": self.bf16}
        with self.run.stage("model", info) as out:
            model.save_pretrained(out, safe_serialization=True)
            self.tokenizer.save_pretrained(out)
            self.catalog.save(out)
            self.trie.save(out)
            (out / PROMPT_FILE).write_text(json.dumps({
                **self.formatter.settings(), "num_beams": self.cfg.eval.num_beams,
                "code_token_ids": self.code_ids}, indent=2) + "\n")
        return self.run / "model"
