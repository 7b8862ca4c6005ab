"""The engine side of genrec on vLLM: a V1 logits processor that keeps decoding on the item trie.

It is registered when the engine starts (``LLM(logits_processors=[TrieLogitsProcessor])``,
``--logits-processors genrec.decoding.vllm_processor:TrieLogitsProcessor``, or the
``vllm.logits_processors`` entry point this package declares) and stays inert for
requests that do not ask for it, so one engine can serve free text and item IDs.

A request switches it on with ``SamplingParams.extra_args["genrec"]``, a dict with the keys
below (all optional: ``{}`` asks for valid items from the served model's catalog). Over
HTTP, vLLM's own OpenAI server passes ``vllm_xargs`` on as ``extra_args`` but accepts only
flat string, number or list values there, so the same object goes as a JSON string,
``"vllm_xargs": {"genrec": json.dumps({"exclude": [3, 17]})}`` (``""`` is the same as ``"{}"``).

``trie``          folder holding ``trie.npz`` (default: the served model's folder).
``version``       any value that changes when that file is rewritten; the processor reloads
                  the trie when it sees a new one (how a running server gets catalog updates).
``prefix_len``    how many trailing *prompt* tokens are already part of the ID (the beam
                  prefix when a client drives its own beam search); 0 for free generation.
``exclude``       catalog rows never to emit (seen, rejected).
``allow``         catalog rows to choose from only (a category, a year range). Rows of either
                  list that are not in the trie's catalog are ignored.
``mode``          ``"mask"`` (default): every token off the trie gets ``-inf``, so greedy and
                  sampling can only spell valid items (vLLM's own beam search passes no
                  per-request arguments, so it is not constrained), and once an ID
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

import json
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
        raise ValueError(
            f"extra_args[{XARGS_KEY!r}] must be an object (over HTTP: vllm_xargs "
            f'{{"{XARGS_KEY}": "<a JSON object as a string>"}}), got {type(args).__name__}'
        )
    unknown = set(args) - {"trie", "version", "prefix_len", "exclude", "allow", "mode"}
    if unknown:
        raise ValueError(
            f"unknown genrec argument(s) {sorted(unknown)}; use trie, version, prefix_len, exclude, allow, mode"
        )
    if args.get("mode", "mask") not in MODES:
        raise ValueError(f"genrec mode must be one of {MODES}, got {args.get('mode')!r}")
    prefix_len = args.get("prefix_len", 0)
    if not isinstance(prefix_len, int) or isinstance(prefix_len, bool) or prefix_len < 0:
        raise ValueError("genrec prefix_len must be a non-negative integer")
    for key in ("exclude", "allow"):
        value = args.get(key)
        if value is not None and (
            not isinstance(value, (list, tuple))
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        ):
            raise ValueError(f"genrec {key} must be a list of catalog row numbers (integers >= 0)")
    if args.get("trie") is not None and not isinstance(args["trie"], (str, os.PathLike)):
        raise ValueError("genrec trie must be a folder path")
    return args


def request_xargs(extra_args: dict | None) -> dict | None:
    """The checked genrec arguments of a request's ``extra_args``; None when it does not ask for them.

    ``extra_args["genrec"]`` is a dict, or the same object as a JSON string (``vllm_xargs`` of
    vLLM's HTTP server takes no nested objects); an empty string means ``{}``.
    """
    args = (extra_args or {}).get(XARGS_KEY)
    if args is None:
        return None
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"vllm_xargs[{XARGS_KEY!r}] must be a JSON object, as a string: {e}") from None
    return check_xargs(args)


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
        args = request_xargs(getattr(sampling_params, "extra_args", None))
        # checked here, in the front end: a missing trie found in the engine process would end the engine
        if args and args.get("trie") and not (Path(args["trie"]) / TRIE_FILE).is_file():
            raise ValueError(f"genrec trie: no {TRIE_FILE} in {args['trie']}")

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
        args = request_xargs(getattr(params, "extra_args", None))
        if args is None:
            return None
        folder = os.fspath(args.get("trie") or self.model_dir)
        trie, sink = self._trie(folder, args.get("version"))
        # rows beyond this catalog (an item removed since) are ignored: raising here would end the engine
        exclude = [r for r in args.get("exclude") or () if r < trie.n_items]
        exclusion = None
        if args.get("allow") is not None:
            allowed = np.asarray([r for r in args["allow"] if r < trie.n_items], dtype=np.int64)
            if exclude:
                allowed = np.setdiff1d(allowed, np.asarray(exclude, dtype=np.int64))
            exclusion = trie.allow_only([allowed])
        elif exclude:
            exclusion = trie.exclusion([exclude])
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
