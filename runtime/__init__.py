"""Compact decoder with pluggable KV store and attention; the real backend builds on it."""
