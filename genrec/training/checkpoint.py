"""Checkpoints: what a killed run needs to continue exactly where it stopped.

``RUN/train/checkpoint/`` holds the trainable weights, optimizer, scheduler, RNG state and
:class:`TrainState`; ``RUN/train/best/`` the trainable weights with the best validation
NDCG@10. Both are replaced atomically (:func:`genrec.io.atomic_folder`), so a kill during a
save leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from genrec.errors import InputError
from genrec.io import atomic_folder, atomic_write_json


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
    minutes: float = 0.0  # wall-clock minutes of the training loop so far, over all resumes


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Copies of the parameters that train (LoRA adapters, new token rows, or everything)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise InputError(
            f"checkpoint does not match the model (e.g. {missing[0]})",
            "delete RUN/train to start over, or use the config the checkpoint was made with",
        )
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


class CheckpointStore:
    """The checkpoint and best-weights folders of one training run.

    Args:
        folder: ``RUN/train``.
        config_hash: the hash a checkpoint must carry to be resumed (:func:`genrec.config.config_hash`).
    """

    def __init__(self, folder: Path, config_hash: str):
        self.folder = Path(folder)
        self.config_hash = config_hash

    def save(self, state: TrainState, model, optimizer, scheduler) -> None:
        with atomic_folder(self.folder / "checkpoint") as d:
            torch.save(
                {
                    "weights": trainable_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                },
                d / "checkpoint.pt",
            )
            atomic_write_json(d / "state.json", asdict(state))

    def load(self, model, optimizer, scheduler) -> TrainState | None:
        """The saved state (weights, optimizer and RNG restored in place), or None to start fresh."""
        ck = self.folder / "checkpoint"
        if not (ck / "state.json").is_file():
            return None
        state = TrainState(**json.loads((ck / "state.json").read_text()))
        if state.config_hash != self.config_hash:
            raise InputError(
                f"{self.folder} holds a checkpoint made with a different config",
                f"use the same config to resume, or delete {self.folder / 'checkpoint'} (or pick a new run_dir)",
            )
        blob = torch.load(ck / "checkpoint.pt", map_location="cpu", weights_only=False)  # resumes on any device
        load_trainable_state(model, blob["weights"])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        return state

    def save_best(self, model) -> None:
        with atomic_folder(self.folder / "best") as d:
            torch.save(trainable_state(model), d / "weights.pt")

    def load_best(self, model) -> bool:
        """Put the best weights into ``model``; False when no evaluation ever saved any."""
        path = self.folder / "best" / "weights.pt"
        if not path.is_file():
            return False
        load_trainable_state(model, torch.load(path, map_location="cpu"))
        return True
