"""Serving: constrained decoding over the item trie and the Recommender built on it."""
