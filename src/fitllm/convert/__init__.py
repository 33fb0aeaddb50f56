"""Checkpoints from elsewhere -> GGUF."""
