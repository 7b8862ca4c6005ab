"""genrec: a causal LLM that recommends by generating semantic item IDs, constrained to real items."""

__version__ = "0.1.0"
