"""Evaluation: ranking metrics, baselines and whole-run evaluation."""
