"""The engine side of genrec on vLLM: a V1 logits processor that keeps decoding on the item trie.

It is registered when the engine starts (``LLM(logits_processors=[TrieLogitsProcessor])``,
``--logits-processors genrec.decoding.vllm_processor:TrieLogitsProcessor``, or the
``vllm.logits_processors`` entry point this package declares) and stays inert for
requests that do not ask for it, so one engine can serve free text and item IDs.

A request switches it on with ``SamplingParams.extra_args["genrec"]`` (``vllm_xargs``
over HTTP), a dict with:

``trie``          folder holding ``trie.npz`` (default: the served model's folder).
``version``       any value that changes when that file is rewritten; the processor reloads
                  the trie when it sees a new one (how a running server gets catalog updates).
``prefix_len``    how many trailing *prompt* tokens are already part of the ID (the beam
                  prefix when a client drives its own beam search); 0 for free generation.
``exclude``       catalog rows never to emit (seen, rejected).
``allow``         catalog rows to choose from only (a category, a year range).
``mode``          ``"mask"`` (default): every token off the trie gets ``-inf``, so greedy,
                  sampling and vLLM's beam search can only spell valid items, and once an ID
                  is complete only end-of-sequence remains. ``"score"``: the same mask plus one
                  *sink* token that carries the log-sum-exp of all masked-out logits, so the
                  processed log-probabilities of the allowed tokens equal the model's raw
                  log-probabilities (the quantity the HF backend ranks by) instead of being
                  renormalised over the allowed set. Only for single-token scoring requests:
                  the caller drops the sink.

Exclusions are applied inside the trie walk (a code is allowed only while one of its items
is still allowed), never by filtering finished items.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrec.tokenization.trie import TRIE_FILE, Exclusion, ItemTrie

try:  # the engine side needs vLLM; importing genrec.serving must not
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates
except ImportError:  # pragma: no cover - vLLM is a core dependency, but keep the error clear
    LogitsProcessor = object  # type: ignore[assignment,misc]
    BatchUpdate = Any  # type: ignore[assignment,misc]
    process_dict_updates = None  # type: ignore[assignment]

#: Key of the per-request arguments in ``SamplingParams.extra_args``.
XARGS_KEY = "genrec"
MODES = ("mask", "score")


def sink_token_id(trie: ItemTrie) -> int:
    """The token that carries the masked-out probability mass in ``"score"`` mode.

    Any id that spells no item works; the smallest one keeps it stable across catalog updates.
    """
    used = torch.unique(trie.sequences)
    candidate = 0
    for tok in used.tolist():  # sorted ascending
        if tok != candidate:
            break
        candidate += 1
    return candidate


def check_xargs(args: Any) -> dict:
    """Validate a request's ``extra_args["genrec"]``; raises ValueError (HTTP 400 in vLLM)."""
    if not isinstance(args, dict):
        raise ValueError(f"extra_args[{XARGS_KEY!r}] must be an object, got {type(args).__name__}")
    unknown = set(args) - {"trie", "version", "prefix_len", "exclude", "allow", "mode"}
    if unknown:
        raise ValueError(
            f"unknown genrec argument(s) {sorted(unknown)}; use trie, version, prefix_len, exclude, allow, mode"
        )
    if args.get("mode", "mask") not in MODES:
        raise ValueError(f"genrec mode must be one of {MODES}, got {args.get('mode')!r}")
    if not isinstance(args.get("prefix_len", 0), int) or args.get("prefix_len", 0) < 0:
        raise ValueError("genrec prefix_len must be a non-negative integer")
    for key in ("exclude", "allow"):
        value = args.get(key)
        if value is not None and (not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value)):
            raise ValueError(f"genrec {key} must be a list of catalog row numbers")
    return args


@dataclass
class _Row:
    """Decoding state of one constrained request."""

    trie: ItemTrie
    exclusion: Exclusion | None
    mode: str
    prompt_prefix: list[int]  # ID tokens that end the prompt
    output: list[int]  # live reference to the request's generated tokens
    sink: int
    eos: int | None

    def node(self) -> int:
        # IDs are 3-5 tokens, so re-walking from the root is cheaper than keeping sync state
        return self.trie.node_of(self.prompt_prefix + list(self.output))


class TrieLogitsProcessor(LogitsProcessor):
    """Masks every constrained request's logits to the trie children of its current ID prefix."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.model_dir = str(vllm_config.model_config.model)
        self.eos = getattr(getattr(vllm_config.model_config, "hf_config", None), "eos_token_id", None)
        if isinstance(self.eos, (list, tuple)):
            self.eos = self.eos[0] if self.eos else None
        self._tries: dict[str, tuple[Any, ItemTrie, int]] = {}
        self._rows: dict[int, _Row] = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        extra = getattr(sampling_params, "extra_args", None) or {}
        if XARGS_KEY in extra:
            check_xargs(extra[XARGS_KEY])

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token is best

    # -- state ---------------------------------------------------------------------------
    def _trie(self, folder: str, version: Any) -> tuple[ItemTrie, int]:
        cached = self._tries.get(folder)
        if cached is None or cached[0] != version:
            path = Path(folder) / TRIE_FILE
            if not path.is_file():
                raise ValueError(f"no {TRIE_FILE} in {folder}")
            trie = ItemTrie.load(folder)
            cached = (version, trie, sink_token_id(trie))
            self._tries[folder] = cached
        return cached[1], cached[2]

    def _new_row(self, params, prompt_ids: list[int] | None, output_ids: list[int]) -> _Row | None:
        extra = getattr(params, "extra_args", None) or {}
        args = extra.get(XARGS_KEY)
        if args is None:
            return None
        folder = os.fspath(args.get("trie") or self.model_dir)
        trie, sink = self._trie(folder, args.get("version"))
        exclusion = None
        if args.get("allow") is not None:
            allowed = np.asarray(args["allow"], dtype=np.int64)
            if args.get("exclude"):
                allowed = np.setdiff1d(allowed, np.asarray(args["exclude"], dtype=np.int64))
            exclusion = trie.allow_only([allowed])
        elif args.get("exclude"):
            exclusion = trie.exclusion([args["exclude"]])
        n = int(args.get("prefix_len", 0))
        prefix = list(prompt_ids[len(prompt_ids) - n :]) if (n and prompt_ids) else []
        return _Row(trie, exclusion, args.get("mode", "mask"), prefix, output_ids, sink, self.eos)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self._rows, batch_update, self._new_row)

    # -- masking -------------------------------------------------------------------------
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._rows:
            return logits
        zero = torch.zeros(1, dtype=torch.long)
        for index, row in self._rows.items():
            if index >= logits.shape[0]:
                continue
            node = row.node()
            values = logits[index]
            depth = int(row.trie.node_depth[node]) if node >= 0 else -1
            allowed = torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)
            if 0 <= depth < row.trie.depth:
                mask = row.trie.allowed_mask(
                    torch.tensor([node]), row.exclusion, rows=zero, vocab_size=values.shape[0]
                )[0]
                allowed |= mask.to(values.device)
            elif row.eos is not None:
                # the ID is complete (or the prefix left the trie): the only way on is to stop
                allowed[row.eos] = True
            if row.mode == "mask" and row.eos is not None and not bool(allowed.any()):
                allowed[row.eos] = True  # everything excluded: end rather than emit NaNs
            if row.mode == "score":
                sink_mass = torch.logsumexp(values.float().masked_fill(allowed, float("-inf")), dim=0)
                values.masked_fill_(~allowed, float("-inf"))
                values[row.sink] = sink_mass.to(values.dtype)
            else:
                values.masked_fill_(~allowed, float("-inf"))
        return logits
