"""Batches and losses of fine-tuning: left-padded collation, the answer loss and its auxiliaries.

Left padding puts every answer at the end of its row, so logits are computed only for the last
``answer length + 1`` positions (``logits_to_keep``) instead of the whole sequence times the
vocabulary. Auxiliary losses (history IDs, distillation) read the final hidden states and
project them onto the code-token rows of the output head only.
"""

from __future__ import annotations

import math

import torch

from genrec.decoding.beam_search import left_pad
from genrec.prompts import IGNORE_INDEX, Example


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
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "labels": label_t,
        "keep": min(keep, input_ids.shape[1]),
    }
    if any(h is not None for h in hist):
        batch["history_labels"] = _left_padded_labels([h or [] for h in hist], input_ids.shape[1])
    return batch


def to_device(batch: dict, device: torch.device) -> dict:
    """``batch`` with its tensors (also those inside tuples, as ``distill``) on ``device``."""

    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, tuple):
            return tuple(move(v) for v in value)
        return value

    return {key: move(value) for key, value in batch.items()}


def _left_padded_labels(rows: list[list[int]], width: int) -> torch.Tensor:
    out = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, lab in enumerate(rows):
        if lab:
            out[r, width - len(lab) :] = torch.tensor(lab)
    return out


def answer_loss(
    model, batch: dict, code_ids: torch.Tensor | None = None, history_weight: float = 0.0, distill_weight: float = 0.0
) -> torch.Tensor:
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
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=keep,
        use_cache=False,
        output_hidden_states=aux,
    )
    logits = out.logits[:, :-1].float()  # predicts the last keep-1 tokens
    targets = batch["labels"][:, -(keep - 1) :] if keep > 1 else batch["labels"][:, :0]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )
    if distill:
        rows, cols, teacher = batch["distill"]
        if len(rows):
            hidden = out.hidden_states[-1][rows, cols - 1]
            log_q = torch.log_softmax(_code_logits(model, hidden, code_ids).float(), dim=-1)
            loss = loss + distill_weight * -(teacher * log_q).sum(-1).mean()
    if aux and history_weight > 0 and "history_labels" in batch:
        rows, cols = (batch["history_labels"] != IGNORE_INDEX).nonzero(as_tuple=True)
        if len(rows):
            hidden = out.hidden_states[-1][rows, cols - 1]  # the final-norm states before each ID token
            code_logits = _code_logits(model, hidden, code_ids).float()
            # position of each target token within code_ids
            target_pos = torch.searchsorted(code_ids, batch["history_labels"][rows, cols])
            loss = loss + history_weight * torch.nn.functional.cross_entropy(code_logits, target_pos)
    return loss


def answer_logprobs(model, batch: dict) -> torch.Tensor:
    """Summed log-probability of each row's answer tokens (the labels), one value per row."""
    keep = batch["keep"]
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, -(keep - 1) :]
    mask = labels != IGNORE_INDEX
    token_lp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (token_lp * mask).sum(-1)


def sdpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> torch.Tensor:
    """Softmax DPO over ``(users, 1 + negatives)`` answer log-likelihoods, chosen in column 0."""
    h = beta * (policy - reference)
    return torch.nn.functional.softplus(torch.logsumexp(h[:, 1:] - h[:, :1], dim=1)).mean()


def _code_logits(model, hidden: torch.Tensor, code_ids: torch.Tensor) -> torch.Tensor:
    """Output-head logits of ``hidden`` restricted to the (sorted) ``code_ids``."""
    inner = model.module if hasattr(model, "module") else model  # DDP
    head = inner.get_output_embeddings()
    if isinstance(head, torch.nn.Linear):
        bias = head.bias[code_ids] if head.bias is not None else None
        return torch.nn.functional.linear(hidden, head.weight[code_ids], bias)
    return head(hidden)[:, code_ids]  # wrapped heads (peft): full logits, then the code columns


def lr_lambda(step: float, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 of the peak.

    ``step`` may be fractional: with ``train.anneal_by_time`` the trainer passes the share of
    the time budget spent, in steps, when it is ahead of the step count.
    """
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
