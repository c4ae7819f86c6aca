"""Triton kernels for SWA decoding and their torch references."""
