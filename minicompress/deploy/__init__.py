"""Deployment: the compressed checkpoint format (``format.py``) and the runtimes built on it."""
