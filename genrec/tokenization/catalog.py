"""The catalog: item id <-> semantic ID <-> code tokens <-> item text.

This is the one place that knows how a semantic ID is spelled as tokens
(``<a_12><b_7><c_201><d_0>``: level letter, underscore, code), and how an item's
own input token is spelled (``<item_B00ABC>``, optional: see ``item_token``).
Everything else (prompts, the trie, decoding, serving) asks the catalog.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.errors import InputError

#: Level letters: level 0 is ``a``, level 1 ``b`` ... (26 levels is far more than any ID uses).
LEVEL_LETTERS = string.ascii_lowercase
_TOKEN_RE = re.compile(r"<([a-z])_(\d+)>")

CATALOG_FILE = "catalog.parquet"
CATALOG_META = "catalog.json"


def code_token(level: int, code: int) -> str:
    """The token string of ``code`` at ``level``: ``code_token(1, 7) == "<b_7>"``."""
    return f"<{LEVEL_LETTERS[level]}_{int(code)}>"


def item_token(item_id: str) -> str:
    """The input-only token of one item: ``item_token("B00ABC") == "<item_B00ABC>"``.

    Spelled from the dataset's item id, not the catalog row, so it keeps naming the same item
    when other items are added or removed. It never matches a code token (those are one letter).
    """
    return f"<item_{item_id}>"


def parse_sid(text: str) -> tuple[int, ...]:
    """Codes of a semantic-ID string: ``"<a_12><b_7>" -> (12, 7)``.

    Raises ValueError if levels are out of order or the text holds anything else.
    """
    codes = []
    pos = 0
    for level, m in enumerate(_TOKEN_RE.finditer(text)):
        if m.start() != pos or m.group(1) != LEVEL_LETTERS[level]:
            raise ValueError(f"not a semantic ID: {text!r}")
        codes.append(int(m.group(2)))
        pos = m.end()
    if pos != len(text) or not codes:
        raise ValueError(f"not a semantic ID: {text!r}")
    return tuple(codes)


@dataclass
class Catalog:
    """Every recommendable item with its semantic ID and text.

    Row ``i`` is item ``i`` everywhere (codes, token ids, trie leaves).

    Attributes:
        item_ids: dataset item ids (strings), unique.
        codes: (n_items, depth) int64 semantic IDs, unique rows.
        level_sizes: number of codes at each level (vocabulary size per level).
        titles: short display text per item (title, or the start of its text).
        texts: the text the item was embedded from ("" when none).
    """

    item_ids: list[str]
    codes: np.ndarray
    level_sizes: list[int]
    titles: list[str]
    texts: list[str]
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _by_codes: dict[tuple[int, ...], int] = field(default_factory=dict, repr=False)
    _sids: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes, dtype=np.int64).reshape(len(self.item_ids), -1)
        n = len(self.item_ids)
        if not (len(self.titles) == len(self.texts) == self.codes.shape[0] == n):
            raise ValueError("catalog columns have different lengths")
        if self.codes.shape[1] != len(self.level_sizes):
            raise ValueError("codes depth differs from level_sizes")
        if n and (self.codes.min() < 0 or (self.codes >= np.asarray(self.level_sizes)).any()):
            raise ValueError("a code is outside its level's range")
        self._index = {item: i for i, item in enumerate(self.item_ids)}
        if len(self._index) != n:
            raise ValueError("duplicate item ids in catalog")
        self._by_codes = {tuple(row): i for i, row in enumerate(self.codes.tolist())}
        if len(self._by_codes) != n:
            raise ValueError("two items share a semantic ID; run disambiguation first")

    # -- sizes ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def depth(self) -> int:
        """Tokens per semantic ID."""
        return len(self.level_sizes)

    # -- lookups ---------------------------------------------------------------------
    def index(self, item_id: str) -> int:
        """Row of an item id; KeyError if unknown."""
        return self._index[item_id]

    def get_index(self, item_id: str) -> int | None:
        return self._index.get(item_id)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def index_of_codes(self, codes: Sequence[int]) -> int | None:
        """Row of the item with exactly these codes, or None."""
        return self._by_codes.get(tuple(int(c) for c in codes))

    def sid(self, i: int) -> str:
        """Semantic-ID string of row ``i``: ``"<a_12><b_7><c_201><d_0>"``."""
        if self._sids is None:  # every prompt spells many IDs: build the strings once
            self._sids = ["".join(code_token(level, c) for level, c in enumerate(row)) for row in self.codes.tolist()]
        return self._sids[i]

    def sid_of(self, item_id: str) -> str:
        return self.sid(self.index(item_id))

    def index_of_sid(self, text: str) -> int | None:
        """Row of the item spelled by a semantic-ID string, or None if it is no item."""
        try:
            codes = parse_sid(text)
        except ValueError:
            return None
        return self.index_of_codes(codes)

    # -- tokens ------------------------------------------------------------------------
    def code_tokens(self) -> list[str]:
        """All code token strings, level by level, each level's codes in order."""
        return [code_token(level, c) for level, size in enumerate(self.level_sizes) for c in range(size)]

    def item_tokens(self) -> list[str]:
        """Every item's input-only token (``<item_ID>``), in catalog row order."""
        return [item_token(i) for i in self.item_ids]

    def token_ids(self, tokenizer) -> np.ndarray:
        """(n_items, depth) token ids of every item's semantic ID under ``tokenizer``.

        Raises InputError if the tokenizer lacks the code tokens.
        """
        vocab = tokenizer.get_vocab()
        table = []
        for level, size in enumerate(self.level_sizes):
            ids = [vocab.get(code_token(level, c), -1) for c in range(size)]
            if min(ids) < 0:
                missing = next(code_token(level, c) for c in range(size) if ids[c] < 0)
                raise InputError(
                    f"tokenizer has no token {missing} for this catalog",
                    "add the code tokens with genrec.tokenization.vocab.add_semantic_id_tokens",
                )
            table.append(np.asarray(ids, dtype=np.int64))
        return np.stack([table[level][self.codes[:, level]] for level in range(self.depth)], axis=1)

    # -- changes -----------------------------------------------------------------------------
    def with_items(
        self, item_ids: Sequence[str], codes: np.ndarray, titles: Sequence[str], texts: Sequence[str]
    ) -> "Catalog":
        """A new catalog with items appended (codes must fit the existing levels)."""
        dup = [i for i in item_ids if i in self._index]
        if dup:
            raise InputError(
                f"item id {dup[0]!r} is already in the catalog", "use a new id, or remove the old item first"
            )
        return Catalog(
            self.item_ids + list(item_ids),
            np.concatenate([self.codes, np.asarray(codes).reshape(len(item_ids), -1)]),
            list(self.level_sizes),
            self.titles + list(titles),
            self.texts + list(texts),
        )

    def without_items(self, item_ids: Iterable[str]) -> "Catalog":
        """A new catalog without these items (unknown ids are an error)."""
        drop = set(item_ids)
        unknown = [i for i in drop if i not in self._index]
        if unknown:
            raise InputError(f"item id {unknown[0]!r} is not in the catalog", "check the ids to remove")
        keep = [i for i, item in enumerate(self.item_ids) if item not in drop]
        return Catalog(
            [self.item_ids[i] for i in keep],
            self.codes[keep],
            list(self.level_sizes),
            [self.titles[i] for i in keep],
            [self.texts[i] for i in keep],
        )

    # -- persistence --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write ``catalog.parquet`` (one row per item) and ``catalog.json`` (levels)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "item_id": pa.array(self.item_ids, pa.string()),
                "sid": pa.array([self.sid(i) for i in range(len(self))], pa.string()),
                "codes": pa.array(self.codes.tolist(), pa.list_(pa.int32())),
                "title": pa.array(self.titles, pa.string()),
                "text": pa.array(self.texts, pa.string()),
            }
        )
        pq.write_table(table, folder / CATALOG_FILE, compression="zstd")
        meta = {
            "level_sizes": list(map(int, self.level_sizes)),
            "n_items": len(self),
            "token_format": "<{level_letter}_{code}>",
        }
        (folder / CATALOG_META).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "Catalog":
        folder = Path(folder)
        if not (folder / CATALOG_FILE).is_file() or not (folder / CATALOG_META).is_file():
            raise InputError(f"{folder} holds no catalog", "run `genrec tokenize CONFIG` first")
        meta = json.loads((folder / CATALOG_META).read_text())
        df = pq.read_table(folder / CATALOG_FILE).to_pandas()
        codes = np.asarray(df["codes"].tolist(), dtype=np.int64).reshape(len(df), len(meta["level_sizes"]))
        return cls(df["item_id"].tolist(), codes, meta["level_sizes"], df["title"].tolist(), df["text"].tolist())

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"item_id": self.item_ids, "sid": [self.sid(i) for i in range(len(self))], "title": self.titles}
        )
