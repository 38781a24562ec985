"""Deployment: the inference runtime, compressed checkpoints, the combined pipeline."""
