"""Discrete-event simulator of sparsity-aware KV caching on one GPU plus host memory."""
