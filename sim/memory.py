"""Static memory layout: where weights live, how much GPU memory is left for KV.

Shared by every policy so that "what fits" has one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import ModelSpec, layer_weight_bytes, weight_bytes

PREFILL_CHUNK_TOKENS = 8192  # prefill runs in chunks of this many tokens; bounds activations


@dataclass(frozen=True)
class MemoryLayout:
    gpu_capacity_bytes: float
    cpu_capacity_bytes: float
    reserved_bytes: float  # CUDA context, allocator slack
    workspace_bytes: float  # activations, logits, recompute buffers
    weights_gpu_bytes: float
    weights_cpu_bytes: float
    offloaded_layers: int  # layers whose weights stream from host every step
    kv_budget_bytes: float  # GPU memory for KV

    @property
    def gpu_static_bytes(self) -> float:
        return self.reserved_bytes + self.workspace_bytes + self.weights_gpu_bytes

    @property
    def cpu_static_bytes(self) -> float:
        return self.weights_cpu_bytes


def workspace_bytes(model: ModelSpec, batch: int, prompt_len: int) -> float:
    """Peak activations: one prefill chunk through the widest layer, plus fp32 logits."""
    tokens = min(batch * prompt_len, max(PREFILL_CHUNK_TOKENS, batch))
    per_token = (4 * model.hidden_size + 2 * model.ffn_dim + model.q_dim + 2 * model.kv_dim) * model.dtype_bytes
    logits = batch * model.vocab_size * 4
    return tokens * per_token + logits


def plan_memory(
    model: ModelSpec,
    batch: int,
    prompt_len: int,
    gpu_bytes: float,
    cpu_bytes: float,
    reserved_bytes: float,
    kv_budget_bytes: float | None,
    min_kv_bytes: float,
    allow_weight_offload: bool,
) -> MemoryLayout:
    """Place weights and size the KV budget.

    With an explicit budget, weights get what the budget leaves and the rest stream from
    host (if allowed). Without one, weights go to the GPU first and KV gets the remainder.
    """
    ws = workspace_bytes(model, batch, prompt_len)
    total_w = weight_bytes(model)
    layer_w = layer_weight_bytes(model)
    non_layer_w = total_w - model.num_layers * layer_w  # embeddings and head stay on GPU
    free_for_weights_and_kv = gpu_bytes - reserved_bytes - ws
    if kv_budget_bytes is not None:
        room = free_for_weights_and_kv - kv_budget_bytes
    else:
        room = free_for_weights_and_kv - min_kv_bytes
    if total_w <= room:
        offloaded = 0
    elif allow_weight_offload:
        # streamed layers need two layer-sized GPU buffers (double buffering)
        room_for_layers = room - non_layer_w - 2 * layer_w
        fit_layers = int(room_for_layers // layer_w) if room_for_layers > 0 else 0
        offloaded = model.num_layers - min(model.num_layers, fit_layers)
    else:
        offloaded = 0  # caller reports OOM
    w_gpu = total_w - offloaded * layer_w + (2 * layer_w if offloaded else 0)
    w_cpu = offloaded * layer_w
    kv = kv_budget_bytes if kv_budget_bytes is not None else max(0.0, free_for_weights_and_kv - w_gpu)
    return MemoryLayout(gpu_bytes, cpu_bytes, reserved_bytes, ws, w_gpu, w_cpu, offloaded, kv)
