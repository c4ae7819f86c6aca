"""Measure a GPU and host, fit cost models, write a hardware profile."""
