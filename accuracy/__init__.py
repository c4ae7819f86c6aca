"""Accuracy study: SWA and its baselines on a real model, and selection traces."""
