"""ItemTrie: the prefix trie of valid items over token ids.

Decoding walks the trie one token per step. Each beam carries the id of the trie
node it stands on; :meth:`ItemTrie.allowed_mask` turns a whole batch of node ids
into a (beams, vocab) boolean mask in a handful of tensor ops (no Python loop per
beam), and :meth:`ItemTrie.step` moves every beam to its child node at once.

Nodes are numbered level by level; node 0 is the root. Edges are stored CSR-style
(``edge_ptr``), sorted by (node, token), so the children of a node are one
contiguous slice and a transition is a binary search over ``node * vocab + token``.

Excluding items (already seen, rejected in a chat, outside an allow-list) happens
inside decoding: a child is allowed only while at least one of its items is still
allowed for that row, so beams never walk into a subtree whose every item is
excluded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

TRIE_FILE = "trie.npz"


class ItemTrie:
    """Prefix trie over fixed-depth token-id sequences, one per item.

    Args:
        sequences: (n_items, depth) token ids; row ``i`` spells item ``i``.
        vocab_size: size of the model's vocabulary (for masks); defaults to
            ``max token id + 1``.
    """

    def __init__(self, sequences: np.ndarray | torch.Tensor, vocab_size: int | None = None):
        seqs = torch.as_tensor(np.asarray(sequences), dtype=torch.long)
        if seqs.ndim != 2 or seqs.shape[0] == 0:
            raise ValueError("ItemTrie needs a non-empty (n_items, depth) array of token ids")
        self.n_items, self.depth = seqs.shape
        self.vocab_size = int(vocab_size if vocab_size is not None else seqs.max().item() + 1)
        if seqs.max().item() >= self.vocab_size:
            raise ValueError("a token id is outside the vocabulary")
        self.sequences = seqs

        # Number the nodes level by level: the unique prefixes of each length.
        path_nodes = torch.zeros(self.n_items, self.depth + 1, dtype=torch.long)  # node at each depth
        n_nodes = 1
        parent_of: list[torch.Tensor] = []
        token_of: list[torch.Tensor] = []
        node_depth = [torch.zeros(1, dtype=torch.long)]
        for t in range(1, self.depth + 1):
            # a prefix of length t is identified by (node at depth t-1, token t-1)
            key = path_nodes[:, t - 1] * self.vocab_size + seqs[:, t - 1]
            uniq, inverse = torch.unique(key, return_inverse=True)
            path_nodes[:, t] = inverse + n_nodes
            parent_of.append(uniq // self.vocab_size)
            token_of.append(uniq % self.vocab_size)
            node_depth.append(torch.full((len(uniq),), t, dtype=torch.long))
            n_nodes += len(uniq)
        if len(torch.unique(path_nodes[:, -1])) != self.n_items:
            raise ValueError("two items share the same token sequence; IDs must be unique")
        self.n_nodes = n_nodes
        self.path_nodes = path_nodes
        self.node_depth = torch.cat(node_depth)

        # Edges (parent -> child); torch.unique returned keys sorted, and nodes of level t
        # are numbered in that order, so edges are already sorted by (parent, token).
        edge_parent = torch.cat(parent_of)
        self.edge_token = torch.cat(token_of)
        self.edge_child = torch.arange(1, n_nodes, dtype=torch.long)
        self.edge_key = edge_parent * self.vocab_size + self.edge_token  # sorted
        counts = torch.bincount(edge_parent, minlength=n_nodes)
        self.edge_ptr = torch.zeros(n_nodes + 1, dtype=torch.long)
        self.edge_ptr[1:] = torch.cumsum(counts, 0)

        # items under each node, and the item at each leaf
        self.leaf_count = torch.bincount(path_nodes.flatten(), minlength=n_nodes)
        self.leaf_item = torch.full((n_nodes,), -1, dtype=torch.long)
        self.leaf_item[path_nodes[:, -1]] = torch.arange(self.n_items)

    @property
    def token_span(self) -> tuple[int, int]:
        """(lo, hi): every ID token id is in ``range(lo, hi)`` (the codes are added to the
        vocabulary in one block, so the span is narrow)."""
        return int(self.sequences.min()), int(self.sequences.max()) + 1

    # -- single-sequence helpers (also what `prefix_allowed_tokens_fn` needs) ---------------
    def node_of(self, prefix: Sequence[int]) -> int:
        """Node reached by a token prefix, or -1 if the prefix leads to no item."""
        node = 0
        for tok in prefix:
            node = int(self.step(torch.tensor([node]), torch.tensor([int(tok)]))[0])
            if node < 0:
                return -1
        return node

    def allowed_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Token ids that may follow ``prefix`` (empty at a leaf or off the trie)."""
        node = self.node_of(prefix)
        if node < 0:
            return []
        return self.edge_token[self.edge_ptr[node] : self.edge_ptr[node + 1]].tolist()

    def item_of(self, sequence: Sequence[int]) -> int | None:
        """Item index spelled by a full token sequence, or None."""
        if len(sequence) != self.depth:
            return None
        node = self.node_of(sequence)
        return None if node < 0 else int(self.leaf_item[node])

    def __contains__(self, sequence: object) -> bool:
        return isinstance(sequence, (list, tuple)) and self.item_of(sequence) is not None

    # -- batched, vectorised -------------------------------------------------------------------
    def step(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Child node for each (node, token) pair; -1 where the edge does not exist."""
        nodes = nodes.to(torch.long)
        key = nodes * self.vocab_size + tokens.to(torch.long)
        pos = torch.searchsorted(self.edge_key, key).clamp(max=len(self.edge_key) - 1)
        hit = (self.edge_key[pos] == key) & (nodes >= 0)
        return torch.where(hit, self.edge_child[pos], torch.full_like(key, -1))

    def allowed_mask(
        self,
        nodes: torch.Tensor,
        exclusion: "Exclusion | None" = None,
        rows: torch.Tensor | None = None,
        vocab_size: int | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """Boolean (len(nodes), vocab - offset) mask of the tokens each beam may take next.

        Args:
            nodes: (B,) node id per beam (-1 rows get an all-False mask).
            exclusion: items excluded per request row (see :meth:`exclusion`).
            rows: (B,) request row of each beam, indexing ``exclusion``; required with it.
            vocab_size: end of the mask (the model's logits may be wider than the trie's vocab).
            offset: the token id of the mask's first column (see :attr:`token_span`): a mask over
                the ID tokens only, ``vocab_size=hi, offset=lo``, is far narrower than the vocabulary.
        """
        width = (vocab_size or self.vocab_size) - offset
        nodes = nodes.to(torch.long)
        B = nodes.shape[0]
        valid = nodes >= 0
        safe = torch.where(valid, nodes, torch.zeros_like(nodes))
        starts = self.edge_ptr[safe]
        counts = torch.where(valid, self.edge_ptr[safe + 1] - starts, torch.zeros_like(starts))
        beam = torch.repeat_interleave(torch.arange(B), counts)
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        edges = torch.repeat_interleave(starts, counts) + (torch.arange(len(beam)) - first)
        tokens = self.edge_token[edges]
        if exclusion is not None:
            if rows is None:
                raise ValueError("rows is required with an exclusion")
            alive = exclusion.alive(rows.to(torch.long)[beam], self.edge_child[edges], self.leaf_count)
            beam, tokens = beam[alive], tokens[alive]
        mask = torch.zeros(B, width, dtype=torch.bool)
        mask[beam, tokens - offset] = True
        return mask

    def exclusion(self, excluded: Sequence[Sequence[int]]) -> "Exclusion":
        """Per-row excluded item indices -> an :class:`Exclusion` for :meth:`allowed_mask`."""
        return Exclusion(self, excluded)

    def allow_only(self, allowed: Sequence[Sequence[int]]) -> "Exclusion":
        """Per-row allow-lists (e.g. a category) expressed as the exclusion of everything else."""
        everything = np.arange(self.n_items)
        return Exclusion(self, [np.setdiff1d(everything, np.asarray(a, dtype=np.int64)) for a in allowed])

    # -- persistence -------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        np.savez_compressed(
            Path(folder) / TRIE_FILE, sequences=self.sequences.numpy(), vocab_size=np.int64(self.vocab_size)
        )

    @classmethod
    def load(cls, folder: str | Path) -> "ItemTrie":
        data = np.load(Path(folder) / TRIE_FILE)
        return cls(data["sequences"], int(data["vocab_size"]))


class Exclusion:
    """How many of each node's items are excluded, per request row (sparse).

    Stored as sorted keys ``row * n_nodes + node`` with counts, so a batch of
    (row, node) queries is one binary search.
    """

    def __init__(self, trie: ItemTrie, excluded: Sequence[Sequence[int]]):
        self.n_nodes = trie.n_nodes
        self.n_rows = len(excluded)
        keys = []
        for row, items in enumerate(excluded):
            items_t = torch.as_tensor(np.unique(np.asarray(items, dtype=np.int64)), dtype=torch.long)
            if len(items_t) == 0:
                continue
            if items_t.min() < 0 or items_t.max() >= trie.n_items:
                raise ValueError("excluded item index outside the catalog")
            keys.append(row * trie.n_nodes + trie.path_nodes[items_t, 1:].flatten())
        if keys:
            self.keys, self.counts = torch.unique(torch.cat(keys), return_counts=True)
        else:
            self.keys = torch.zeros(0, dtype=torch.long)
            self.counts = torch.zeros(0, dtype=torch.long)

    def excluded_count(self, rows: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        if len(self.keys) == 0:
            return torch.zeros_like(nodes)
        key = rows * self.n_nodes + nodes
        pos = torch.searchsorted(self.keys, key).clamp(max=len(self.keys) - 1)
        return torch.where(self.keys[pos] == key, self.counts[pos], torch.zeros_like(key))

    def alive(self, rows: torch.Tensor, nodes: torch.Tensor, leaf_count: torch.Tensor) -> torch.Tensor:
        """True where ``nodes`` still has at least one item that ``rows`` may receive."""
        return leaf_count[nodes] - self.excluded_count(rows, nodes) > 0
