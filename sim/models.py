"""Model dimensions, the catalog of public configs, and the byte/FLOP formulas.

Every other part (simulator, real backend, reports) calls these functions: there is
one definition of KV bytes per token and of weight bytes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

Family = Literal["opt", "llama"]


class ModelSpec(BaseModel):
    """Dimensions of a decoder-only transformer, as in its public config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    family: Family
    num_layers: PositiveInt
    hidden_size: PositiveInt
    num_heads: PositiveInt
    num_kv_heads: PositiveInt
    head_dim: PositiveInt
    ffn_dim: PositiveInt
    vocab_size: PositiveInt
    activation: Literal["relu", "gelu", "silu"]
    norm: Literal["layernorm", "rmsnorm"]
    max_positions: PositiveInt = 2048
    tie_embeddings: bool = False
    dtype_bytes: PositiveInt = Field(2, description="bytes per weight/activation element (fp16/bf16)")

    @model_validator(mode="after")
    def _check_heads(self) -> ModelSpec:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        return self

    @property
    def kv_dim(self) -> int:
        """Width of K (or V) per token and layer: kv_heads x head_dim."""
        return self.num_kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def gated_mlp(self) -> bool:
        """LLaMA-family MLPs have gate, up and down projections (SwiGLU)."""
        return self.family == "llama"

    @property
    def has_bias(self) -> bool:
        return self.family == "opt"


# ---------------------------------------------------------------------------
# Byte formulas (the single definition used everywhere)
# ---------------------------------------------------------------------------


def kv_bytes_per_token_per_layer(model: ModelSpec, kv_dtype_bytes: int | None = None) -> int:
    """K and V of one token in one layer: 2 x kv_heads x head_dim x bytes per element."""
    b = model.dtype_bytes if kv_dtype_bytes is None else kv_dtype_bytes
    return 2 * model.kv_dim * b


def kv_bytes_per_token(model: ModelSpec, kv_dtype_bytes: int | None = None) -> int:
    """K and V of one token over all layers: 2 x layers x kv_heads x head_dim x bytes."""
    return model.num_layers * kv_bytes_per_token_per_layer(model, kv_dtype_bytes)


def int8_scale_bytes_per_token_per_layer(model: ModelSpec) -> int:
    """INT8 KV keeps one fp16 scale per token, KV head and tensor (K and V)."""
    return 2 * model.num_kv_heads * 2


def stored_kv_bytes_per_token_per_layer(model: ModelSpec, int8_kv: bool) -> int:
    """What one token's KV costs to store or move in one layer, scales included."""
    if int8_kv:
        return kv_bytes_per_token_per_layer(model, 1) + int8_scale_bytes_per_token_per_layer(model)
    return kv_bytes_per_token_per_layer(model)


def hidden_bytes_per_token_per_layer(model: ModelSpec) -> int:
    """The layer input x of one token, kept for KV recompute (K, V = x Wk, x Wv)."""
    return model.hidden_size * model.dtype_bytes


def layer_param_count(model: ModelSpec) -> int:
    """Parameters of one decoder layer (attention, MLP, norms, biases)."""
    h = model.hidden_size
    attn = h * model.q_dim + 2 * h * model.kv_dim + model.q_dim * h
    mlp = (3 if model.gated_mlp else 2) * h * model.ffn_dim
    norms = 2 * h * (2 if model.norm == "layernorm" else 1)
    bias = 0
    if model.has_bias:
        bias = model.q_dim + 2 * model.kv_dim + h + model.ffn_dim + h
    return attn + mlp + norms + bias


def embedding_param_count(model: ModelSpec) -> int:
    """Token embeddings, learned positions (OPT), final norm and the LM head if untied."""
    h = model.hidden_size
    n = model.vocab_size * h
    if model.family == "opt":
        n += (model.max_positions + 2) * h  # OPT's learned positions carry an offset of 2
    n += h * (2 if model.norm == "layernorm" else 1)
    if not model.tie_embeddings:
        n += model.vocab_size * h
    return n


def param_count(model: ModelSpec) -> int:
    return model.num_layers * layer_param_count(model) + embedding_param_count(model)


# FlexGen's group-wise 4-bit compression: 4-bit values plus an fp16 scale and minimum per
# group of 64 elements, 4.5 bits per element: stored bytes per fp16 byte
GROUP4_COMPRESSED_FRACTION = 4.5 / 16.0


def layer_weight_bytes(model: ModelSpec) -> int:
    return layer_param_count(model) * model.dtype_bytes


def weight_bytes(model: ModelSpec) -> int:
    """All weights of the model at its dtype."""
    return param_count(model) * model.dtype_bytes


def layer_gemm_shapes(model: ModelSpec) -> list[tuple[str, int, int]]:
    """The (name, n, k) of each GEMM a decoder layer runs on m tokens: y[m,n] = x[m,k] W[k,n]."""
    h = model.hidden_size
    shapes = [
        ("qkv_proj", model.q_dim + 2 * model.kv_dim, h),
        ("o_proj", h, model.q_dim),
    ]
    if model.gated_mlp:
        shapes += [("gate_up_proj", 2 * model.ffn_dim, h), ("down_proj", h, model.ffn_dim)]
    else:
        shapes += [("fc1", model.ffn_dim, h), ("fc2", h, model.ffn_dim)]
    return shapes


def kv_recompute_gemm_shape(model: ModelSpec) -> tuple[int, int]:
    """(n, k) of the fused K,V projection that recomputes KV from x: [m,h] x [h, 2 kv_dim]."""
    return 2 * model.kv_dim, model.hidden_size


def recompute_width_bucket(rows: int, cap: int | None = None) -> int:
    """The width the real backend recomputes ``rows`` rows per sequence at (its Phase III
    graphs are captured per width bucket): rows rounded up to a multiple of 16, or of a
    quarter of the largest power of two not above rows, whichever is larger; at most
    ``cap`` (the widest a step can recompute), never below rows."""
    if rows <= 0:
        return 0
    step = max(16, (1 << (rows.bit_length() - 1)) // 4)
    b = -(-rows // step) * step
    return max(rows, min(b, cap)) if cap is not None else b


def recompute_width_buckets(max_rows: int, cap: int | None = None) -> list[int]:
    """Every bucket width up to the one of ``max_rows``."""
    out: list[int] = []
    last = recompute_width_bucket(max_rows, cap)
    w = 1
    while max_rows > 0 and (not out or out[-1] < last):
        b = recompute_width_bucket(w, cap)
        out.append(b)
        w = b + 1
    return out


def lm_head_gemm_shape(model: ModelSpec) -> tuple[int, int]:
    return model.vocab_size, model.hidden_size


def swa_importance_bytes(model: ModelSpec, batch: int, max_tokens: int, history: int, ring_tokens: int) -> int:
    """GPU memory of SWA's importance bookkeeping, all layers: an fp32 score per token and
    sequence, plus a ring of the last `history` steps' (token id int32, weight fp32) lists of
    up to `ring_tokens` entries and their lengths (int32), so the oldest step can be taken
    back out. Selection is per sequence (shared by its KV heads)."""
    per_layer = batch * (max_tokens * 4 + history * ring_tokens * 8 + history * 4)
    return model.num_layers * per_layer


def prompt_importance_rows(history: int, prompt: int) -> int:
    """Query rows a SWA prefill attends for the prompt's importance: the prompt positions
    still inside the importance history."""
    return min(history, prompt)


def prompt_importance_elements(model: ModelSpec, seqs: int, history: int, prompt: int) -> int:
    """Attention weights one layer's prompt importance computes: sequences x query heads x
    rows x prompt tokens."""
    return seqs * model.num_heads * prompt_importance_rows(history, prompt) * prompt
