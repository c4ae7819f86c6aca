"""Catalog of public model configs (dimensions only; no weights).

Values are copied from each model's published config.json (HuggingFace hub model
cards / the papers). Names are lower-case; aliases map common spellings.
"""

from __future__ import annotations

from typing import Any

from .errors import InputError
from .models import ModelSpec


def _opt(name: str, layers: int, hidden: int, heads: int) -> dict[str, Any]:
    return dict(
        name=name,
        family="opt",
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        ffn_dim=4 * hidden,
        vocab_size=50272,
        activation="relu",
        norm="layernorm",
        max_positions=2048,
        tie_embeddings=True,
    )


def _llama(
    name: str,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    ffn: int,
    vocab: int,
    max_pos: int,
    tie: bool = False,
    head_dim: int | None = None,
) -> dict[str, Any]:
    return dict(
        name=name,
        family="llama",
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim or hidden // heads,
        ffn_dim=ffn,
        vocab_size=vocab,
        activation="silu",
        norm="rmsnorm",
        max_positions=max_pos,
        tie_embeddings=tie,
    )


_CATALOG: dict[str, dict[str, Any]] = {
    d["name"]: d
    for d in [
        _opt("opt-6.7b", 32, 4096, 32),
        _opt("opt-13b", 40, 5120, 40),
        _opt("opt-30b", 48, 7168, 56),
        _opt("opt-66b", 64, 9216, 72),
        _opt("opt-175b", 96, 12288, 96),  # the OPT paper's Table 1 (no public config.json)
        _llama("llama-7b", 32, 4096, 32, 32, 11008, 32000, 2048),
        _llama("llama-13b", 40, 5120, 40, 40, 13824, 32000, 2048),
        _llama("llama-33b", 60, 6656, 52, 52, 17920, 32000, 2048),
        _llama("llama-65b", 80, 8192, 64, 64, 22016, 32000, 2048),
        _llama("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
        _llama("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
        _llama("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
        _llama("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
        _llama("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192),
        _llama("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768),
        _llama("smollm2-135m", 30, 576, 9, 3, 1536, 49152, 8192, tie=True, head_dim=64),
    ]
}

_ALIASES = {
    "llama-30b": "llama-33b",
    "llama2-7b": "llama-2-7b",
    "llama2-13b": "llama-2-13b",
    "llama2-70b": "llama-2-70b",
    "llama3-8b": "llama-3-8b",
    "llama3-70b": "llama-3-70b",
}


def model_names() -> list[str]:
    return sorted(_CATALOG)


def model_config(name: str) -> dict[str, Any]:
    """The catalog entry as a plain mapping (so `--set model.x=...` can edit it)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _CATALOG:
        raise InputError(f"unknown model '{name}'; known: {', '.join(model_names())}", field="model")
    return dict(_CATALOG[key])


def get_model(name: str) -> ModelSpec:
    return ModelSpec(**model_config(name))
