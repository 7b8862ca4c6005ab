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
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from genrec.config import SASRecConfig
from genrec.data import PreparedDataset
from genrec.errors import InputError
from genrec.metrics import evaluate_rankings
from genrec.precision import compute_device
from genrec.recommender import Recommendation, ranked_indices, top_k_by_score

_WEIGHTS, _META = "model.pt", "sasrec.json"

logger = logging.getLogger(__name__)


class SASRec(nn.Module):
    """Causal pre-LN transformer over item sequences with tied input/output item embeddings."""

    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.n_items, self.max_len, self.heads = n_items, cfg.max_len, cfg.heads
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        # the original SASRec uses a hidden-width point-wise FFN (sasrec.ffn 0); RecBole's is 256 wide
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                cfg.hidden,
                cfg.heads,
                dim_feedforward=cfg.ffn or cfg.hidden,
                dropout=cfg.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(cfg.layers)
        )
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
        x = self.item_emb(seq) * self.item_emb.embedding_dim**0.5 + self.pos_emb(pos)
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


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _left_pad(seqs: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """(B, L) long tensor, each row's last ``max_len`` entries right-aligned, 0 before them."""
    seqs = [list(s)[-max_len:] for s in seqs]
    L = max(1, max((len(s) for s in seqs), default=1))
    out = torch.zeros(len(seqs), L, dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            out[r, L - len(s) :] = torch.tensor(s, dtype=torch.long)
    return out


def _top_k_in_batches(
    scores, catalog, histories, k: int, exclude, allow, progress: bool, batch_size: int
) -> list[list[Recommendation]]:
    """Top ``k`` rows per history from ``scores(histories)``, a batch of histories at a time."""
    out: list[list[Recommendation]] = []
    for start in tqdm(range(0, len(histories), batch_size), desc="sasrec", unit="batch", disable=not progress):
        stop = start + batch_size
        out += top_k_by_score(
            scores(histories[start:stop]),
            k,
            exclude[start:stop] if exclude is not None else None,
            allow[start:stop] if allow is not None else None,
            catalog,
        )
    return out


class SASRecRecommender:
    """Fit / recommend / save / load wrapper of :class:`SASRec` over catalog row indices."""

    def __init__(self, config: SASRecConfig | None = None, catalog=None):
        self.config = config or SASRecConfig()
        self.catalog = catalog  # optional: names the returned items (item_ids, titles)
        self.model: SASRec | None = None
        self.n_items = 0
        self.best_epoch = 0
        self.best_valid_ndcg = 0.0
        self.train_seconds = 0.0
        self.epochs_run = 0
        #: one entry per validation: epoch, minutes of training so far, validation NDCG@10 (the
        #: learning curve, so quality per training minute can be set beside genrec's)
        self.valid_history: list[dict] = []
        #: the folder :meth:`load` read the model from (None for a model fitted here)
        self.loaded_from: Path | None = None

    # -- training -----------------------------------------------------------------
    def fit(self, dataset: PreparedDataset, progress: bool = True) -> "SASRecRecommender":
        """Train on the training sequences, validate with full ranking, keep the best epoch.

        Logs the size of the job first (sequences, batches per epoch, the most epochs) and
        the measured time of the first epoch with the longest the rest can take; ``progress``
        shows one bar over all batches (epoch, loss and validation NDCG@10 beside it).
        """
        cfg = self.config
        torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)  # the shuffle, on the CPU wherever the model runs
        self.n_items = dataset.n_items
        self.model = SASRec(self.n_items, cfg).to(compute_device(cfg.device))
        train = self._training_sequences(dataset)
        _, v_hist, v_targets = dataset.split_rows("valid", cfg.eval_users, cfg.seed)
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
        n_batches = math.ceil(len(train) / cfg.batch_size)
        logger.info(
            "SASRec on %s: %d training sequences, %d items, %d batches of %d per epoch, at most %d epochs "
            "(%d batches); validation NDCG@10 on %d users every %d epoch(s), stop after %d without gain",
            self.device,
            len(train),
            self.n_items,
            n_batches,
            cfg.batch_size,
            cfg.epochs,
            cfg.epochs * n_batches,
            len(v_hist),
            cfg.eval_every,
            cfg.patience,
        )
        best_state, bad, ndcg = None, 0, float("nan")
        self.valid_history = []
        t0 = time.perf_counter()
        bar = tqdm(total=cfg.epochs * n_batches, desc="sasrec", unit="batch", disable=not progress)
        for epoch in range(1, cfg.epochs + 1):
            loss = self._train_epoch(train, opt, gen, bar, epoch, ndcg)
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                ranked = ranked_indices(self.recommend(v_hist, k=10))
                ndcg = evaluate_rankings(ranked, v_targets, self.n_items, ks=(10,))["ndcg@10"]
                minutes = round((time.perf_counter() - t0) / 60, 2)
                self.valid_history.append({"epoch": epoch, "minutes": minutes, "ndcg@10": round(ndcg, 5)})
                if best_state is None or ndcg > self.best_valid_ndcg:
                    best_state = copy.deepcopy(self.model.state_dict())
                    self.best_epoch, self.best_valid_ndcg, bad = epoch, ndcg, 0
                else:
                    bad += 1
            bar.set_postfix(epoch=f"{epoch}/{cfg.epochs}", loss=f"{loss:.3f}", val_ndcg10=f"{ndcg:.4f}")
            self.epochs_run = epoch
            if epoch == 1 and cfg.epochs > 1:
                first = time.perf_counter() - t0
                logger.info(
                    "SASRec: epoch 1 took %s; the other %d epochs take at most ~%s (less if early stopping ends it)",
                    _duration(first),
                    cfg.epochs - 1,
                    _duration(first * (cfg.epochs - 1)),
                )
            if bad >= cfg.patience:
                break
        bar.close()
        self.model.load_state_dict(best_state)
        self.model.eval()
        self.train_seconds = time.perf_counter() - t0
        logger.info(
            "SASRec: %d epochs in %.0f s; best validation NDCG@10 %.4f at epoch %d (seed %d)",
            self.epochs_run,
            self.train_seconds,
            self.best_valid_ndcg,
            self.best_epoch,
            cfg.seed,
        )
        return self

    def _training_sequences(self, dataset: PreparedDataset) -> list[list[int]]:
        """Training sequences as model indices (catalog row + 1), each its last ``max_len + 1`` items."""
        index, keep = dataset.item_index(), self.config.max_len + 1  # input and labels both max_len
        train = [[index[i] + 1 for i in s][-keep:] for s in dataset.train_sequences().values()]
        train = [s for s in train if len(s) >= 2]  # one item gives no (input, label) pair
        if not train:
            raise InputError("no user has two training items", "prepare the data with longer sequences")
        return train

    def _train_epoch(self, train: list[list[int]], opt, gen: torch.Generator, bar, epoch: int, ndcg: float) -> float:
        """One pass over the shuffled sequences; the mean loss."""
        cfg = self.config
        self.model.train()
        total, steps = 0.0, 0
        for b in torch.randperm(len(train), generator=gen).split(cfg.batch_size):
            batch = _left_pad([train[i] for i in b.tolist()], cfg.max_len + 1).to(self.device)
            inp, labels = batch[:, :-1], batch[:, 1:]
            h = self.model(inp)
            keep = labels > 0  # score only real next items: no padding rows in the softmax
            loss = F.cross_entropy(self.model.logits(h[keep]), labels[keep] - 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
            bar.update(1)
            if steps % 20 == 0:
                bar.set_postfix(epoch=f"{epoch}/{cfg.epochs}", loss=f"{total / steps:.3f}", val_ndcg10=f"{ndcg:.4f}")
        return total / max(1, steps)

    # -- inference ----------------------------------------------------------------
    @torch.no_grad()
    def scores(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """(users, n_items) scores of every catalog row after each history (rows, oldest first)."""
        if self.model is None:
            raise InputError("SASRec model is not trained", "call fit() or SASRecRecommender.load() first")
        was_training = self.model.training
        self.model.eval()
        seq = _left_pad([[i + 1 for i in h] for h in histories], self.config.max_len).to(self.device)
        out = self.model.logits(self.model(seq)[:, -1])  # newest position
        self.model.train(was_training)
        return out.cpu()

    def item_table(self) -> torch.Tensor:
        """float32 ``(n_items, hidden)``: each catalog row's item vector, the tied input and output table.

        Row ``i`` belongs to catalog row ``i`` (the model's padding row 0 is left out); a detached copy,
        so callers may keep or change it.
        """
        if self.model is None:
            raise InputError("SASRec model is not trained", "call fit() or SASRecRecommender.load() first")
        return self.model.item_emb.weight[1:].detach().float().cpu().clone()

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (the CPU before :meth:`fit` or :meth:`load`)."""
        return self.model.item_emb.weight.device if self.model is not None else torch.device("cpu")

    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int = 10,
        *,
        exclude: Sequence[Iterable[int]] | None = None,
        allow: Sequence[Iterable[int]] | None = None,
        progress: bool = False,
        batch_size: int = 256,
    ) -> list[list[Recommendation]]:
        """Top ``k`` catalog rows per history from a full ranking (a :class:`~genrec.recommender.Recommender`).

        ``exclude`` holds whole histories when seen items are excluded (not only the last
        ``max_len`` items the model reads).
        """
        return _top_k_in_batches(self.scores, self.catalog, histories, k, exclude, allow, progress, batch_size)

    # -- files --------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write ``model.pt`` (state dict) and ``sasrec.json`` (config, n_items, how the fit went)."""
        if self.model is None:
            raise InputError("SASRec model is not trained", "call fit() before save()")
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in self.model.state_dict().items()}, out / _WEIGHTS)
        meta = {
            # where it was fitted is no setting of the model: load() puts it where the loader runs
            "config": {k: v for k, v in asdict(self.config).items() if k != "device"},
            "n_items": self.n_items,
            "seed": self.config.seed,
            "best_epoch": self.best_epoch,
            "best_valid_ndcg@10": self.best_valid_ndcg,
            "epochs_run": self.epochs_run,
            "train_seconds": self.train_seconds,
            "valid_history": self.valid_history,
        }
        (out / _META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto") -> "SASRecRecommender":
        """A recommender from what :meth:`save` wrote, on ``device`` (see :func:`genrec.precision.compute_device`)."""
        folder = Path(folder)
        if not (folder / _META).is_file() or not (folder / _WEIGHTS).is_file():
            raise InputError(f"{folder} holds no saved SASRec model", "train one with run_sasrec first")
        meta = json.loads((folder / _META).read_text(encoding="utf-8"))
        rec = cls(SASRecConfig(**{**meta["config"], "device": device}))
        rec.n_items, rec.best_epoch = int(meta["n_items"]), int(meta.get("best_epoch", 0))
        rec.best_valid_ndcg = float(meta.get("best_valid_ndcg@10", 0.0))
        rec.train_seconds = float(meta.get("train_seconds", 0.0))
        rec.epochs_run = int(meta.get("epochs_run", rec.best_epoch))
        rec.valid_history = list(meta.get("valid_history", []))
        rec.loaded_from = folder
        rec.model = SASRec(rec.n_items, rec.config)
        rec.model.load_state_dict(torch.load(folder / _WEIGHTS, map_location="cpu", weights_only=True))
        rec.model.to(compute_device(device)).eval()
        return rec


class SASRecEnsemble:
    """SASRec fits averaged: scores are the log of the members' mean item softmax.

    The teacher of ``train.teacher_seeds`` > 1 (:mod:`genrec.training.distill`), here as a
    :class:`~genrec.recommender.Recommender` so it is scored by the same evaluator as its members.
    """

    def __init__(self, members: Sequence[SASRecRecommender], catalog=None):
        if not members:
            raise InputError("an ensemble of no SASRec models", "give at least one saved SASRec folder")
        if len({m.n_items for m in members}) > 1:
            raise InputError("the ensemble's SASRec models score different catalogs", "fit them on the same data")
        self.members = list(members)
        self.catalog = catalog
        self.n_items = members[0].n_items
        self.max_len = min(m.config.max_len for m in members)  # what every member can read

    @classmethod
    def load(cls, folders: Sequence[str | Path], catalog=None, device: str = "auto") -> "SASRecEnsemble":
        """An ensemble of the SASRec models saved in ``folders``, on ``device``."""
        return cls([SASRecRecommender.load(f, device) for f in folders], catalog)

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @torch.no_grad()
    def item_probs(
        self, seq: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, temperature: float = 1.0
    ) -> torch.Tensor:
        """The members' mean item softmax at ``seq[rows, pos]`` (left-padded model indices, catalog row + 1),
        on the members' device."""
        total = 0
        seq, rows, pos = seq.to(self.device), rows.to(self.device), pos.to(self.device)
        for m in self.members:
            total = total + torch.softmax(m.model.logits(m.model(seq)[rows, pos]).float() / temperature, dim=-1)
        return total / len(self.members)

    def scores(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """(users, n_items) log mean probability of every catalog row after each history."""
        seq = _left_pad([[i + 1 for i in h] for h in histories], self.max_len)
        newest = torch.full((len(seq),), seq.shape[1] - 1)
        return self.item_probs(seq, torch.arange(len(seq)), newest).clamp_min(1e-30).log().cpu()

    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int = 10,
        *,
        exclude: Sequence[Iterable[int]] | None = None,
        allow: Sequence[Iterable[int]] | None = None,
        progress: bool = False,
        batch_size: int = 256,
    ) -> list[list[Recommendation]]:
        """Top ``k`` catalog rows per history from the averaged full ranking."""
        return _top_k_in_batches(self.scores, self.catalog, histories, k, exclude, allow, progress, batch_size)
