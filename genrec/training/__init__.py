"""Fine-tuning a causal LM to generate next-item semantic IDs."""
