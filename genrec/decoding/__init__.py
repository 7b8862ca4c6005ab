"""Decoding: trie-constrained beam search (HF and vLLM backends) and chat resolution."""
