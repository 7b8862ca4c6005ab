"""Model set-up for training: base model + code tokens + the fine-tuning wrapper."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrec.config import GenrecConfig
from genrec.errors import InputError
from genrec.tokenization.catalog import Catalog
from genrec.tokenization.vocab import add_item_tokens, resize_model_for_catalog
from genrec.models.base_lm import load_tokenizer, resolve_model

#: item-table fields that hold a category or genre, by preference
CATEGORY_FIELDS = ("genres", "categories", "category", "attributes")


def category_strings(dataset) -> list[str] | None:
    """A short category/genre per item (for conversational wishes), or None if the data has none."""
    for name in CATEGORY_FIELDS:
        if name in dataset.items.columns:
            out = []
            for value in dataset.items[name].fillna("").astype(str):
                parts = [p.strip() for p in value.replace("|", ",").split(",") if p.strip()]
                # the most specific category of a path ("Industrial, Tools, Drills" -> "Drills");
                # the first genre of a list ("Comedy, Drama" -> "Comedy")
                out.append((parts[-1] if name in ("categories", "category") else parts[0]) if parts else "")
            return out
    return None


def _scratch_model(cfg: GenrecConfig, vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg.model
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=m.scratch_hidden,
        intermediate_size=m.scratch_intermediate,
        num_hidden_layers=m.scratch_layers,
        num_attention_heads=m.scratch_heads,
        num_key_value_heads=m.scratch_kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        attn_implementation=m.attn_implementation,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def add_dropout(model, p: float) -> None:
    """Train-time dropout on a Llama-style model that has none (HF Llama only has attention dropout).

    Dropout goes on the token embeddings and on each decoder layer's attention and MLP outputs
    (where they join the residual stream, as in GPT-2/nanoGPT), plus on the attention weights.
    It is added with forward hooks, so the saved weights and config stay a plain Llama; every hook
    follows ``module.training``, so evaluation and serving never drop anything.
    """
    if p == 0.0:
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(getattr(base, "model", None), "layers", None)
    if layers is None or not all(hasattr(l, "self_attn") and hasattr(l, "mlp") for l in layers):
        raise InputError(
            f"model.dropout needs a Llama-style model (decoder layers with self_attn and mlp); "
            f"{type(base).__name__} has none",
            "set model.dropout=0 for this model",
        )

    def drop_output(module, args, output):
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (F.dropout(output[0], p, module.training),) + tuple(output[1:])
        return F.dropout(output, p, module.training)

    base.get_input_embeddings().register_forward_hook(drop_output)
    for layer in layers:
        layer.self_attn.register_forward_hook(drop_output)
        layer.mlp.register_forward_hook(drop_output)
        if hasattr(layer.self_attn, "attention_dropout"):
            layer.self_attn.attention_dropout = p  # read in forward only while training


def build_model(cfg: GenrecConfig, catalog: Catalog, item_vectors: torch.Tensor | None = None):
    """(tokenizer, model ready to train, code token ids) for the run's config.

    ``item_vectors`` (one row per catalog item; ``train.item_token_rows: teacher``) become the
    item tokens' rows, frozen: :func:`freeze_rows`, or left out of LoRA's trainable rows.
    """
    mcfg, tcfg = cfg.model, cfg.train
    tokenizer = load_tokenizer(mcfg.name)
    if mcfg.name == "scratch":
        model = _scratch_model(cfg, len(tokenizer))
    else:
        from transformers import AutoModelForCausalLM

        where = resolve_model(mcfg.name)
        kwargs = {"attn_implementation": mcfg.attn_implementation, "dtype": torch.float32}
        if tcfg.finetune == "qlora":
            # nf4 base weights, bf16 compute: the QLoRA recipe; double quantization saves a little more memory
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_use_double_quant=True,
            )
            kwargs["device_map"] = {"": "cuda" if torch.cuda.is_available() else "cpu"}
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
        if mcfg.keep_layers:
            _keep_first_layers(model, mcfg.keep_layers)
    # generation config of the base must never switch on sampling in our decoding paths
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.do_sample = False
        for k in ("temperature", "top_p", "top_k"):
            setattr(model.generation_config, k, None)
    code_ids = resize_model_for_catalog(
        model,
        tokenizer,
        catalog,
        init=mcfg.embedding_init,
        seed=cfg.seed,
        item_tokens=tcfg.item_tokens,
        item_vectors=item_vectors if tcfg.item_tokens else None,
    )
    item_ids = add_item_tokens(tokenizer, catalog) if tcfg.item_tokens else []  # already added: ids only
    frozen = item_ids if item_vectors is not None else []
    if tcfg.finetune == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        freeze_rows(model.get_input_embeddings().weight, frozen)
    else:
        model = _add_lora(model, tcfg, list(code_ids) + [t for t in item_ids if t not in set(frozen)])
    # hooks go on last: resizing and peft replace the embedding module they would sit on
    add_dropout(model, mcfg.dropout)
    return tokenizer, model, code_ids


def freeze_rows(weight: torch.nn.Parameter, rows: list[int]) -> None:
    """Give ``rows`` of an embedding matrix no gradient, so the optimizer leaves them as they are
    (with zero gradients Adam's step is zero; ``train.weight_decay`` would still shrink them)."""
    if not rows:
        return
    index = torch.tensor(sorted(rows), dtype=torch.long)
    weight.register_hook(lambda grad: grad.index_fill(0, index.to(grad.device), 0.0))


def _keep_first_layers(model, n: int) -> None:
    """Cut a pretrained decoder to its first ``n`` layers (the config says so, for export)."""
    layers = model.get_decoder().layers
    if n > len(layers):
        raise InputError(
            f"model.keep_layers={n} but the model has {len(layers)} layers", "use 0 (all) or a smaller number"
        )
    model.get_decoder().layers = layers[:n]
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = list(model.config.layer_types)[:n]


def _add_lora(model, tcfg, new_token_ids):
    from peft import LoraConfig, get_peft_model

    if tcfg.finetune == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lcfg = LoraConfig(
        r=tcfg.lora_r,
        lora_alpha=tcfg.lora_alpha,
        lora_dropout=tcfg.lora_dropout,
        target_modules=list(tcfg.lora_targets),
        task_type="CAUSAL_LM",
        # the new code (and item) token rows are trained; the rest of the vocabulary stays frozen
        trainable_token_indices={"embed_tokens": list(new_token_ids)},
    )
    return get_peft_model(model, lcfg)
