"""The plan type: what a scheduler decides for one step, for either executor.

Policies emit a StepPlan per step (prefill, then each decode step). The SimPy engine
times it with the cost model; the real backend (``alisa.runtime``) runs it on tensors.
Counts are per sequence and per layer so that both executors can scale them by batch;
the real backend also reads ``indices`` (token ids selected per sequence and KV head),
which the simulator leaves empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Phase = Literal["prefill", "I", "II", "III"]


@dataclass(frozen=True, slots=True)
class LayerPlan:
    """One layer of one step. All token counts are per sequence."""

    new_tokens: int = 1            # tokens run through the layer's GEMMs (prompt length in prefill)
    attended_tokens: int = 0       # KV rows attention reads (prefill: causal over new_tokens)
    h2d_kv_tokens: int = 0         # host-resident selected tokens fetched as KV
    recompute_tokens: int = 0      # host-resident selected tokens fetched as x and recomputed
    d2h_kv_tokens: int = 0         # tokens whose KV is written back to host
    d2h_hidden_tokens: int = 0     # tokens whose layer input x is written to host (for recompute)
    weight_h2d_bytes: int = 0      # weights streamed from host for this layer
    cpu_attention_tokens: int = 0  # tokens attended on the CPU where they live (FlexGen-style)
    prefill: bool = False
    indices: Any = field(default=None, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class StepPlan:
    step: int                      # -1 for prefill, then 0 .. gen_len-2
    phase: Phase
    context_len: int               # tokens cached per sequence once this step has run
    batch: int
    layers: tuple[LayerPlan, ...]
    gpu_kv_tokens: int             # per sequence and layer, resident on GPU after the step
    cpu_kv_tokens: int             # per sequence and layer, KV resident on host
    cpu_hidden_tokens: int = 0     # per sequence and layer, x resident on host
    recompute_ratio: float = 0.0
    gpu_extra_bytes: float = 0.0   # transient GPU buffers beyond resident KV (fetch staging)
    note: str = ""

    @property
    def attended_tokens(self) -> int:
        return max(lp.attended_tokens for lp in self.layers)


@dataclass(frozen=True, slots=True)
class OutOfMemory:
    """A policy's answer when a step cannot be placed: which pool and by how much."""

    pool: Literal["gpu", "cpu"]
    reason: str
    step: int
