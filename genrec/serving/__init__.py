"""Serving: the OpenAI-compatible HTTP server over a vLLM (or HF) engine."""
