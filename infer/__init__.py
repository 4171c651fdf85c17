"""Inference entry points (``python -m infer.<name>``)."""
