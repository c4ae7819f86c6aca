"""A compact decoder for the LLaMA family (RoPE, RMSNorm, SwiGLU, GQA) and OPT (learned
positions, LayerNorm, ReLU, biases), built from a transformers model's weights.

The decoder does everything but attention: each layer hands q, k, v to the caller, who
stores K/V where it likes (``KVCache`` or its own store) and attends as it likes (dense,
a selection mask, the Triton kernel), then gives the attention output back. That split is
what lets the accuracy study and the real backend run SWA and its baselines on one model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DecoderConfig:
    family: str  # "llama" | "opt"
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    norm_eps: float
    rope_theta: float = 10000.0
    pos_offset: int = 2  # OPT's learned positions start at 2


def _rope_theta(cfg) -> float:  # transformers moved rope_theta into rope_parameters
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" in rp:
        return float(rp["rope_theta"])
    return float(getattr(cfg, "rope_theta", 10000.0))


class Decoder:
    """Weights as plain tensors; no autograd; fp32 or the dtype they come in."""

    def __init__(self, cfg: DecoderConfig, w: dict[str, torch.Tensor]) -> None:
        self.cfg = cfg
        self.w = w
        if cfg.family == "llama":
            inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
            self.inv_freq = inv.to(w["embed"].device)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_hf(cls, model: torch.nn.Module) -> Decoder:
        c: Any = model.config  # a transformers PretrainedConfig: its fields depend on the model type
        mt = c.model_type
        sd = {k: v.detach() for k, v in model.state_dict().items()}
        if mt in ("llama", "mistral", "qwen2"):
            hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
            cfg = DecoderConfig(
                "llama",
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.num_key_value_heads,
                hd,
                c.intermediate_size,
                c.vocab_size,
                c.rms_norm_eps,
                _rope_theta(c),
            )
            w = {
                "embed": sd["model.embed_tokens.weight"],
                "norm": sd["model.norm.weight"],
                "lm_head": sd.get("lm_head.weight", sd["model.embed_tokens.weight"]),
            }
            for i in range(cfg.num_layers):
                p = f"model.layers.{i}."
                w[f"{i}.ln1"] = sd[p + "input_layernorm.weight"]
                w[f"{i}.ln2"] = sd[p + "post_attention_layernorm.weight"]
                w[f"{i}.qkv"] = torch.cat(
                    [
                        sd[p + "self_attn.q_proj.weight"],
                        sd[p + "self_attn.k_proj.weight"],
                        sd[p + "self_attn.v_proj.weight"],
                    ]
                )
                w[f"{i}.o"] = sd[p + "self_attn.o_proj.weight"]
                w[f"{i}.gate_up"] = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]])
                w[f"{i}.down"] = sd[p + "mlp.down_proj.weight"]
            return cls(cfg, w)
        if mt == "opt":
            if not c.do_layer_norm_before or c.word_embed_proj_dim != c.hidden_size:
                raise ValueError("only pre-norm OPT without embedding projection (OPT >= 1.3B) is supported")
            cfg = DecoderConfig(
                "opt",
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.num_attention_heads,
                c.hidden_size // c.num_attention_heads,
                c.ffn_dim,
                c.vocab_size,
                1e-5,
            )
            pre = "model.decoder."
            w = {
                "embed": sd[pre + "embed_tokens.weight"],
                "pos": sd[pre + "embed_positions.weight"],
                "norm": sd[pre + "final_layer_norm.weight"],
                "norm_b": sd[pre + "final_layer_norm.bias"],
                "lm_head": sd.get("lm_head.weight", sd[pre + "embed_tokens.weight"]),
            }
            for i in range(cfg.num_layers):
                p = f"{pre}layers.{i}."
                for dst, src in (("ln1", "self_attn_layer_norm"), ("ln2", "final_layer_norm")):
                    w[f"{i}.{dst}"], w[f"{i}.{dst}_b"] = sd[p + src + ".weight"], sd[p + src + ".bias"]
                w[f"{i}.qkv"] = torch.cat([sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
                w[f"{i}.qkv_b"] = torch.cat([sd[p + f"self_attn.{x}_proj.bias"] for x in "qkv"])
                w[f"{i}.o"], w[f"{i}.o_b"] = sd[p + "self_attn.out_proj.weight"], sd[p + "self_attn.out_proj.bias"]
                w[f"{i}.fc1"], w[f"{i}.fc1_b"] = sd[p + "fc1.weight"], sd[p + "fc1.bias"]
                w[f"{i}.fc2"], w[f"{i}.fc2_b"] = sd[p + "fc2.weight"], sd[p + "fc2.bias"]
            return cls(cfg, w)
        raise ValueError(f"model type '{mt}' is not supported (llama, mistral, opt)")

    # -- pieces ---------------------------------------------------------------------------
    def _norm(self, x: torch.Tensor, key: str) -> torch.Tensor:
        if self.cfg.family == "llama":
            xf = x.float()
            xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps)
            return self.w[key] * xf.to(x.dtype)
        return F.layer_norm(x, (x.shape[-1],), self.w[key], self.w[key + "_b"], self.cfg.norm_eps)

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids [B, T], positions [T] -> hidden [B, T, h]."""
        x = F.embedding(ids, self.w["embed"])
        if self.cfg.family == "opt":
            x = x + F.embedding(positions + self.cfg.pos_offset, self.w["pos"])[None]
        return x

    def rope_tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions [T] (shared by the batch) or [B, T]; a caller decoding
        one position through every layer computes them once (``qkv(..., rope=)``)."""
        f = positions.float()[..., None] * self.inv_freq
        emb = torch.cat([f, f], dim=-1)
        if emb.dim() == 3:
            emb = emb[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _rope(
        self, x: torch.Tensor, positions: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """x [B, H, T, d] rotated by position (rotate-half convention, as transformers);
        positions [T] shared by the batch, or [B, T] per sequence."""
        cos, sin = tables if tables is not None else self.rope_tables(positions, x.dtype)
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def qkv(
        self,
        layer: int,
        x: torch.Tensor,
        positions: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer input x [B, T, h] -> (normed x, q [B,Hq,T,d], k [B,Hkv,T,d], v [B,Hkv,T,d])."""
        c = self.cfg
        B, T, _ = x.shape
        xn = self._norm(x, f"{layer}.ln1")
        y = F.linear(xn, self.w[f"{layer}.qkv"], self.w.get(f"{layer}.qkv_b"))
        qd, kd = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        q = y[..., :qd].view(B, T, c.num_heads, c.head_dim).transpose(1, 2)
        k = y[..., qd : qd + kd].view(B, T, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = y[..., qd + kd :].view(B, T, c.num_kv_heads, c.head_dim).transpose(1, 2)
        if c.family == "llama":
            q, k = self._rope(q, positions, rope), self._rope(k, positions, rope)
        return xn, q, k, v

    def kv_from_input(self, layer: int, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Recompute K, V [B, Hkv, T, d] of tokens from their layer input x [B, T, h] (ALISA's
        Phase III): only the K and V rows of the fused projection, [h, 2 kv_dim]
        (``kv_recompute_gemm_shape``). positions: [T] or [B, T]."""
        c = self.cfg
        B, T, _ = x.shape
        xn = self._norm(x, f"{layer}.ln1")
        qd, kd = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        w = self.w[f"{layer}.qkv"][qd:]
        bias = self.w.get(f"{layer}.qkv_b")
        y = F.linear(xn, w, bias[qd:] if bias is not None else None)
        k = y[..., :kd].view(B, T, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = y[..., kd:].view(B, T, c.num_kv_heads, c.head_dim).transpose(1, 2)
        if c.family == "llama":
            k = self._rope(k, positions)
        return k, v

    def finish_layer(self, layer: int, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """attn [B, Hq, T, d] -> the layer's output hidden [B, T, h] (residuals, MLP)."""
        B, _, T, _ = attn.shape
        o = attn.transpose(1, 2).reshape(B, T, -1)
        x = x + F.linear(o, self.w[f"{layer}.o"], self.w.get(f"{layer}.o_b"))
        xn = self._norm(x, f"{layer}.ln2")
        if self.cfg.family == "llama":
            gu = F.linear(xn, self.w[f"{layer}.gate_up"])
            g, u = gu.chunk(2, dim=-1)
            return x + F.linear(F.silu(g) * u, self.w[f"{layer}.down"])
        hdn = F.relu(F.linear(xn, self.w[f"{layer}.fc1"], self.w[f"{layer}.fc1_b"]))
        return x + F.linear(hdn, self.w[f"{layer}.fc2"], self.w[f"{layer}.fc2_b"])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._norm(x, "norm"), self.w["lm_head"])

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.cfg.head_dim)

    # -- whole passes -----------------------------------------------------------------------
    def forward(
        self,
        ids: torch.Tensor,
        attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """Logits [B, T, V] for ids [B, T] at positions start.. ; `attend(layer, q, k, v)`
        returns attention [B, Hq, T, d] (default: dense causal over these T tokens)."""
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        x = self.embed(ids, positions)
        for layer in range(self.cfg.num_layers):
            _, q, k, v = self.qkv(layer, x, positions)
            a = attend(layer, q, k, v) if attend else dense_causal(q, k, v, self.scale)
            x = self.finish_layer(layer, x, a)
        return self.logits(x)


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def dense_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    g = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, repeat_kv(k, g), repeat_kv(v, g), is_causal=q.shape[2] > 1, scale=scale)


class KVCache:
    """Preallocated per-layer K/V [B, Hkv, N, d] with a fill length."""

    def __init__(
        self, cfg: DecoderConfig, batch: int, max_tokens: int, dtype: torch.dtype, device: torch.device | str
    ) -> None:
        shape = (batch, cfg.num_kv_heads, max_tokens, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.n = [0] * cfg.num_layers

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t = self.n[layer], k.shape[2]
        self.k[layer][:, :, n : n + t] = k
        self.v[layer][:, :, n : n + t] = v
        self.n[layer] = n + t
        return self.k[layer][:, :, : n + t], self.v[layer][:, :, : n + t]
