"""Code tokens in an HF tokenizer and model.

The catalog's code tokens (``<a_0>`` ... ) become ordinary added tokens, so
``"<a_12><b_7>"`` tokenizes to exactly two ids and decodes back to the same
text. New embedding rows start where they mean something:

* ``init="text"`` (default): the row of code ``c`` at level ``l`` leans toward the
  mean input embedding of the text tokens of the items whose ID has ``c`` at
  ``l`` (likewise for the rows of an untied output head), so the model starts out
  reading ``<a_12>`` roughly as "the things these items are about";
* ``init="mean"``: the mean of the existing rows plus small per-dimension noise.

Either way each new row is then scaled to the average norm of the existing rows:
averages of many rows are short vectors, and rows much shorter (or longer) than
the rest give early logits and gradients an odd scale.

With ``item_tokens=True`` every item also gets an input-only token (``<item_ID>``,
spelled by the catalog) that prompts show after the item's ID in a history, so the
model has one row per item to read, as SASRec's item embedding is, besides the
shared code rows. Its row starts as the mean of the item's code rows (same norm
scaling), i.e. it first reads like the ID it sits next to, or, given item vectors
(a SASRec teacher's item table), as those vectors lifted to the model width.
"""

from __future__ import annotations

import torch
from tokenizers import AddedToken

from genrec.tokenization.catalog import Catalog


def add_semantic_id_tokens(tokenizer, catalog: Catalog) -> list[int]:
    """Add the catalog's code tokens to ``tokenizer`` (idempotent). Returns their ids in order."""
    return _add_tokens(tokenizer, catalog.code_tokens())


def add_item_tokens(tokenizer, catalog: Catalog) -> list[int]:
    """Add every item's input-only token to ``tokenizer`` (idempotent). Returns their ids, row order."""
    return _add_tokens(tokenizer, catalog.item_tokens())


def _add_tokens(tokenizer, tokens: list[str]) -> list[int]:
    vocab = tokenizer.get_vocab()
    new = [
        AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=False)
        for t in tokens
        if t not in vocab
    ]
    if new:
        tokenizer.add_tokens(new)
    return tokenizer.convert_tokens_to_ids(tokens)


@torch.no_grad()
def resize_model_for_catalog(
    model,
    tokenizer,
    catalog: Catalog,
    init: str = "text",
    max_text_tokens: int = 32,
    seed: int = 0,
    item_tokens: bool = False,
    item_vectors: torch.Tensor | None = None,
) -> list[int]:
    """Add the code tokens (and with ``item_tokens`` the item tokens) to ``tokenizer`` and grow
    ``model``'s embeddings to match.

    Item rows start as the mean of their item's code rows, or with ``item_vectors`` (one row per
    catalog item, any width) as those vectors under a fixed random orthogonal map to the model
    width (:func:`lift_item_vectors`). Returns the ids of the code tokens (item token ids:
    ``add_item_tokens``, which is idempotent).
    """
    if item_vectors is not None and len(item_vectors) != len(catalog):
        raise ValueError(f"item_vectors has {len(item_vectors)} rows for {len(catalog)} catalog items")
    if init not in ("text", "mean"):
        raise ValueError(f"unknown embedding init {init!r}; use 'text' or 'mean'")
    token_ids = add_semantic_id_tokens(tokenizer, catalog)
    item_ids = add_item_tokens(tokenizer, catalog) if item_tokens else []
    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old_rows:
        return token_ids
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_ids = torch.tensor([t for t in token_ids if t >= old_rows], dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    emb_in = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is None or out.weight.data_ptr() == emb_in.data_ptr()
    weights = [emb_in] if tied else [emb_in, out.weight]
    new_items = [(row, t) for row, t in enumerate(item_ids) if t >= old_rows]
    if new_items:
        item_code_rows = torch.as_tensor(catalog.token_ids(tokenizer))[[row for row, _ in new_items]]
        item_rows = torch.tensor([t for _, t in new_items])
    for w in weights:
        old = w[:old_rows].float()
        target = old.norm(dim=1).mean()
        if len(new_ids):
            rows = old.mean(0) + 0.1 * old.std(0) * torch.randn(len(new_ids), old.shape[1], generator=gen)
            if init == "text" and any(catalog.texts):
                text_rows = _code_text_means(w, tokenizer, catalog, max_text_tokens, old_rows, new_ids)
                has = text_rows.norm(dim=1) > 0
                rows[has] = 0.5 * rows[has] + 0.5 * text_rows[has]
            rows = rows / rows.norm(dim=1, keepdim=True).clamp(min=1e-12) * target
            w[new_ids] = rows.to(w.dtype)
        # item rows after the code rows they are averaged from
        if new_items:
            if item_vectors is not None:
                items = lift_item_vectors(item_vectors, w.shape[1], seed)[[row for row, _ in new_items]]
            else:
                items = w[item_code_rows].float().mean(1)  # (n, depth, dim) -> the mean of each item's code rows
            items = items / items.norm(dim=1, keepdim=True).clamp(min=1e-12) * target
            w[item_rows] = items.to(w.dtype)
    return token_ids


def lift_item_vectors(vectors: torch.Tensor, width: int, seed: int = 0) -> torch.Tensor:
    """``vectors`` (items x d) in ``width`` dimensions through a fixed random map with orthonormal
    columns (rows): distances and angles between items are kept when d <= width, and the map
    is the same for the same seed and shapes."""
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    d = vectors.shape[1]
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(max(d, width), min(d, width), generator=gen))  # orthonormal columns
    return vectors @ (q.T if d <= width else q)


def _code_text_means(
    weight: torch.Tensor, tokenizer, catalog: Catalog, max_text_tokens: int, old_rows: int, new_ids: torch.Tensor
) -> torch.Tensor:
    """Per new code token: mean over its items of the mean row of the item's text tokens."""
    texts = [t or title for t, title in zip(catalog.texts, catalog.titles)]
    enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_text_tokens)["input_ids"]
    item_vec = torch.zeros(len(catalog), weight.shape[1])
    has_text = torch.zeros(len(catalog), dtype=torch.bool)
    for i, ids in enumerate(enc):
        ids = [t for t in ids if t < old_rows]
        if ids:
            item_vec[i] = weight[torch.tensor(ids)].float().mean(0)
            has_text[i] = True
    position = torch.full((weight.shape[0],), -1, dtype=torch.long)
    position[new_ids] = torch.arange(len(new_ids))
    sums = torch.zeros(len(new_ids), weight.shape[1])
    counts = torch.zeros(len(new_ids))
    tok_table = torch.as_tensor(catalog.token_ids(tokenizer))[has_text]
    vecs = item_vec[has_text]
    for level in range(catalog.depth):
        k = position[tok_table[:, level]]
        ok = k >= 0
        sums.index_add_(0, k[ok], vecs[ok])
        counts.index_add_(0, k[ok], torch.ones(int(ok.sum())))
    return sums / counts.clamp(min=1).unsqueeze(1)
