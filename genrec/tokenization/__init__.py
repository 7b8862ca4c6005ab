"""Semantic IDs: item vectors -> hierarchical codes -> unique IDs -> catalog, trie and code tokens."""

from genrec.tokenization.catalog import Catalog, code_token, parse_sid
from genrec.tokenization.trie import ItemTrie

__all__ = ["Catalog", "ItemTrie", "code_token", "parse_sid"]
