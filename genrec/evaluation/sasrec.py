"""SASRec baseline trained with full-softmax cross-entropy, in the same harness as genrec.

The strong variant of SASRec (Kang & McAuley, 2018): instead of the paper's one sampled
negative per position with binary cross-entropy, every position of a training sequence is
scored against the whole catalog with a softmax (as in the public reproductions that reach
NDCG@10 around 0.05 on Amazon Beauty). Same splits (:meth:`PreparedDataset.split`) and
same metrics code (:func:`evaluate_rankings`) as genrec runs, so numbers compare directly.

Item indices inside the model are catalog rows + 1; 0 is padding. Sequences are
left-padded so that the last position always holds the newest item, whose output is the
prediction.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from genrec.config import SASRecConfig
from genrec.data import PreparedDataset
from genrec.errors import GenrecError
from genrec.evaluation.evaluate import split_rows
from genrec.evaluation.metrics import evaluate_rankings

SPLITS = ("valid", "test")
_WEIGHTS, _META = "model.pt", "sasrec.json"


class SASRec(nn.Module):
    """Causal pre-LN transformer over item sequences with tied input/output item embeddings."""

    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.n_items, self.max_len, self.heads = n_items, cfg.max_len, cfg.heads
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        # the original SASRec uses a hidden-width point-wise FFN, so dim_feedforward = hidden
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, dim_feedforward=cfg.hidden, dropout=cfg.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        # small embeddings (nanoGPT-style): N(0, 1) tied weights start with huge logits and a
        # loss far above log(n_items)
        for emb in (self.item_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, H) of left-padded item sequences (B, L), L <= max_len."""
        B, L = seq.shape
        # positions count back from the newest item, so batch padding length does not matter
        pos = torch.arange(self.max_len - L, self.max_len, device=seq.device)
        x = self.item_emb(seq) * self.item_emb.embedding_dim ** 0.5 + self.pos_emb(pos)
        x = self.drop(x)
        # one mask for causality and padding; every query may see itself so that padded
        # rows (all keys masked otherwise) do not turn into NaN in the softmax
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(L, dtype=torch.bool, device=seq.device)
        allowed = causal & ((seq != 0)[:, None, :] | eye)  # (B, L, L)
        mask = ~allowed.repeat_interleave(self.heads, dim=0)  # True = blocked, (B*heads, L, L)
        for block in self.blocks:
            x = block(x, src_mask=mask)
        return self.ln_f(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Scores over catalog rows 0..n_items-1 (tied weights; the padding row is never scored)."""
        return h @ self.item_emb.weight[1:].T


def _left_pad(seqs: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """(B, L) long tensor, each row's last ``max_len`` entries right-aligned, 0 before them."""
    seqs = [list(s)[-max_len:] for s in seqs]
    L = max(1, max((len(s) for s in seqs), default=1))
    out = torch.zeros(len(seqs), L, dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            out[r, L - len(s):] = torch.tensor(s, dtype=torch.long)
    return out


class SASRecRecommender:
    """Fit / recommend / save / load wrapper of :class:`SASRec` over catalog row indices."""

    def __init__(self, config: SASRecConfig | None = None):
        self.config = config or SASRecConfig()
        self.model: SASRec | None = None
        self.n_items = 0
        self.best_epoch = 0
        self.best_valid_ndcg = 0.0
        self.train_seconds = 0.0

    # -- training -----------------------------------------------------------------
    def fit(self, dataset: PreparedDataset, progress: bool = True) -> "SASRecRecommender":
        """Train on the training sequences, validate with full ranking, keep the best epoch."""
        cfg = self.config
        torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        index = dataset.item_index()
        self.n_items = dataset.n_items
        self.model = SASRec(self.n_items, cfg)
        # +1: model indices; keep max_len + 1 items so input and labels both have max_len
        train = [[index[i] + 1 for i in s][-(cfg.max_len + 1):] for s in dataset.train_sequences().values()]
        train = [s for s in train if len(s) >= 2]  # one item gives no (input, label) pair
        if not train:
            raise GenrecError("no user has two training items", "prepare the data with longer sequences")
        _, v_hist, v_targets = split_rows(dataset, "valid", cfg.eval_users, cfg.seed)
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                betas=(0.9, 0.98))
        best_state, bad, ndcg = None, 0, float("nan")
        t0 = time.perf_counter()
        bar = tqdm(range(1, cfg.epochs + 1), desc="sasrec", disable=not progress)
        for epoch in bar:
            self.model.train()
            total, steps = 0.0, 0
            for b in torch.randperm(len(train), generator=gen).split(cfg.batch_size):
                batch = _left_pad([train[i] for i in b.tolist()], cfg.max_len + 1)
                inp, labels = batch[:, :-1], batch[:, 1:]
                h = self.model(inp)
                keep = labels > 0  # score only real next items: no padding rows in the softmax
                loss = F.cross_entropy(self.model.logits(h[keep]), labels[keep] - 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, steps = total + loss.item(), steps + 1
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                ranked = self.recommend(v_hist, k=10)
                ndcg = evaluate_rankings(ranked, v_targets, self.n_items, ks=(10,))["ndcg@10"]
                if best_state is None or ndcg > self.best_valid_ndcg:
                    best_state = copy.deepcopy(self.model.state_dict())
                    self.best_epoch, self.best_valid_ndcg, bad = epoch, ndcg, 0
                else:
                    bad += 1
            bar.set_postfix(loss=f"{total / max(1, steps):.3f}", val_ndcg10=f"{ndcg:.4f}")
            if bad >= cfg.patience:
                break
        bar.close()
        self.model.load_state_dict(best_state)
        self.model.eval()
        self.train_seconds = time.perf_counter() - t0
        return self

    # -- inference ----------------------------------------------------------------
    @torch.no_grad()
    def recommend(self, histories: Sequence[Sequence[int]], k: int = 10, exclude_seen: bool = False,
                  batch_size: int = 256) -> list[list[int]]:
        """Top ``k`` catalog rows per history (rows, oldest first), from a full ranking."""
        if self.model is None:
            raise GenrecError("SASRec model is not trained", "call fit() or SASRecRecommender.load() first")
        was_training = self.model.training
        self.model.eval()
        k = min(k, self.n_items)
        out: list[list[int]] = []
        for start in range(0, len(histories), batch_size):
            chunk = histories[start:start + batch_size]
            seq = _left_pad([[i + 1 for i in h] for h in chunk], self.config.max_len)
            scores = self.model.logits(self.model(seq)[:, -1])  # (B, n_items), newest position
            if exclude_seen:
                for r, h in enumerate(chunk):  # whole history, not only the last max_len
                    if h:
                        scores[r, torch.tensor(list(h), dtype=torch.long)] = float("-inf")
            out.extend(scores.topk(k, dim=1).indices.tolist())
        self.model.train(was_training)
        return out

    # -- files --------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write ``model.pt`` (state dict) and ``sasrec.json`` (config, n_items, best epoch)."""
        if self.model is None:
            raise GenrecError("SASRec model is not trained", "call fit() before save()")
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), out / _WEIGHTS)
        meta = {"config": asdict(self.config), "n_items": self.n_items, "best_epoch": self.best_epoch,
                "best_valid_ndcg@10": self.best_valid_ndcg, "train_seconds": self.train_seconds}
        (out / _META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> "SASRecRecommender":
        """A recommender from what :meth:`save` wrote."""
        folder = Path(folder)
        if not (folder / _META).is_file() or not (folder / _WEIGHTS).is_file():
            raise GenrecError(f"{folder} holds no saved SASRec model", "train one with run_sasrec first")
        meta = json.loads((folder / _META).read_text(encoding="utf-8"))
        rec = cls(SASRecConfig(**meta["config"]))
        rec.n_items, rec.best_epoch = int(meta["n_items"]), int(meta.get("best_epoch", 0))
        rec.best_valid_ndcg = float(meta.get("best_valid_ndcg@10", 0.0))
        rec.train_seconds = float(meta.get("train_seconds", 0.0))
        rec.model = SASRec(rec.n_items, rec.config)
        rec.model.load_state_dict(torch.load(folder / _WEIGHTS, map_location="cpu", weights_only=True))
        rec.model.eval()
        return rec


def run_sasrec(run_dir: str | Path, config: SASRecConfig, split: str = "test", max_users: int = 0,
               progress: bool = True, sample_seed: int = 0) -> dict[str, Any]:
    """Fit SASRec on RUN/data, score ``split``; write RUN/baselines/sasrec/metrics_{split}.json + model.

    Model seeds other than 0 write to ``RUN/baselines/sasrec-seedN`` so seeds do not overwrite
    each other. ``max_users`` samples users with ``sample_seed`` (not the model seed), the
    sampler and default of ``genrec evaluate --max-users N --seed 0``, so rows compare.
    """
    from genrec.runs import git_commit
    if split not in SPLITS:  # before training, not after minutes of it
        raise GenrecError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    run = Path(run_dir)
    dataset = PreparedDataset.load(run / "data")
    commit = git_commit()
    rec = SASRecRecommender(config).fit(dataset, progress=progress)
    _, histories, targets = split_rows(dataset, split, max_users, sample_seed)
    metrics = evaluate_rankings(rec.recommend(histories, k=10), targets, dataset.n_items, ks=(5, 10))
    out = run / "baselines" / ("sasrec" if config.seed == 0 else f"sasrec-seed{config.seed}")
    rec.save(out)
    report = {**metrics, "split": split, "users": len(targets), "max_users": max_users,
              "user_sample_seed": sample_seed, "commit": commit, "best_epoch": rec.best_epoch,
              "best_valid_ndcg@10": rec.best_valid_ndcg, "train_seconds": round(rec.train_seconds, 3),
              "config": asdict(config)}
    (out / f"metrics_{split}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return metrics
