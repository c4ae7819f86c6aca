"""Bundled text (data only)."""
