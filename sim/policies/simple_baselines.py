"""Baselines that differ from dense-gpu in where weights live or how much KV is kept.

* ``accelerate`` — HuggingFace Accelerate's ``device_map="auto"`` offload: the layers that
  fit stay on the GPU, the rest are copied from (pageable) host memory every forward,
  synchronously by the module hooks (no prefetch); ``device_map: cpu`` offloads every
  decoder layer (the FlexGen benchmark's map). KV stays on the GPU; dense attention.
  Leaves out: disk offload, Accelerate's own per-module overheads.
* ``zero-inference`` — DeepSpeed ZeRO-Inference: all weights in pinned host memory
  (``pin_memory: false``: pageable), streamed layer by layer with the next layer
  prefetched while this one computes; KV on the GPU; dense attention. Leaves out: its KV
  offload option and NVMe offload.

Both run HuggingFace transformers' eager OPT attention, which concatenates the cache with
the new token's K and V every step (a copy of the whole cache) before its two bmm: the
attended KV crosses GPU memory three times (``attention_passes``), read off
modeling_opt.py.
* ``h2o`` — H2O heavy-hitter eviction on the GPU only: the cache keeps ceil(kv_budget x n)
  tokens (recent plus heavy hitters); evicted tokens are gone, so memory and attention
  shrink with the budget. Leaves out: the accuracy side (``alisa accuracy`` has it) and
  the score bookkeeping's own cost.
"""

from __future__ import annotations

import math

from ..hardware import GB
from ..memory import MemoryLayout, plan_memory
from ..models import layer_weight_bytes, weight_bytes
from ..plan import LayerPlan, OutOfMemory, StepPlan
from ..scenario import AcceleratePolicyConfig, H2OPolicyConfig, ZeroInferencePolicyConfig
from .base import Policy

HF_ATTENTION_PASSES = 3.0  # torch.cat(past, new) reads and writes the cache; bmm reads it


class GpuKvPolicy(Policy):
    """Shared: KV on the GPU, OOM when it no longer fits; per-layer weight streaming."""

    stream_all = False  # every layer's weights come from host (zero-inference)
    sync = False  # no prefetch (accelerate)
    pageable = False
    attention_passes = 1.0  # our own fused decode attention
    kv_offloaded = False  # transformers' OffloadedCache: KV on the host, a layer prefetched at a time
    weight_offload = True  # layers that do not fit stream from the host

    def plan_layout(self) -> MemoryLayout:
        hw, pol, m = self.sc.hardware, self.sc.policy, self.model
        budget = pol.gpu_kv_budget_gb * GB if pol.gpu_kv_budget_gb is not None else None
        lay = plan_memory(
            m,
            self.batch,
            self.sc.workload.prompt_len,
            hw.gpu_memory_bytes,
            hw.cpu_memory_bytes,
            hw.gpu_reserved_gb * GB,
            budget,
            self._min_kv_bytes(),
            allow_weight_offload=self.weight_offload,
        )
        if self.stream_all:  # every layer streams; two layer buffers on the GPU
            lw = layer_weight_bytes(m)
            w_gpu = weight_bytes(m) - m.num_layers * lw + 2 * lw
            free = lay.gpu_capacity_bytes - lay.reserved_bytes - lay.workspace_bytes - w_gpu
            lay = MemoryLayout(
                lay.gpu_capacity_bytes,
                lay.cpu_capacity_bytes,
                lay.reserved_bytes,
                lay.workspace_bytes,
                w_gpu,
                m.num_layers * lw,
                m.num_layers,
                budget if budget is not None else max(0.0, free),
            )
        return lay

    def _min_kv_bytes(self) -> float:
        wl = self.sc.workload
        layers = 2 if self.kv_offloaded else self.model.num_layers  # offloaded: two layers' buffers
        return self.batch * layers * self.coster.kv_bytes * (wl.prompt_len + wl.gen_len)

    def kept_tokens(self, n: int) -> int:
        return n

    def _layer(self, l: int, **kw) -> LayerPlan:
        wb = self.weight_stream_bytes(l)
        return LayerPlan(
            weight_h2d_bytes=wb,
            attention_contiguous=True,  # the whole kept cache (H2O evicts: what it keeps is compact)
            contiguous_fetch=True,
            sync_fetch=self.sync and wb > 0,
            pageable_fetch=self.pageable,
            attention_passes=self.attention_passes,
            **kw,
        )

    def _fits(self, n: int, step: int) -> OutOfMemory | None:
        if self.kv_offloaded:
            need = self.layout.cpu_static_bytes + n * self.batch * self.model.num_layers * self.coster.kv_bytes
            if need > self.layout.cpu_capacity_bytes:
                return OutOfMemory(
                    "cpu",
                    f"the offloaded KV cache of {n} tokens x batch {self.batch} and the offloaded weights need "
                    f"{need / GB:.2f} GB of host memory; the host has {self.layout.cpu_capacity_bytes / GB:.2f} GB",
                    step,
                )
            return None
        cap = self.kv_tokens_capacity(self.layout.kv_budget_bytes)
        if n > cap:
            need = n * self.batch * self.model.num_layers * self.coster.kv_bytes
            return OutOfMemory(
                "gpu",
                (
                    f"KV cache of {n} tokens x batch {self.batch} needs {need / GB:.2f} GB; "
                    f"the GPU has {self.layout.kv_budget_bytes / GB:.2f} GB for KV (holds {cap} tokens per sequence)"
                ),
                step,
            )
        return None

    def prefill(self) -> StepPlan | OutOfMemory:
        p = self.sc.workload.prompt_len
        kept = self.kept_tokens(p)
        oom = self._fits(kept, -1)
        if oom:
            return oom
        wb = p if self.kv_offloaded else 0  # an offloaded cache sends the prompt's KV down
        layers = tuple(
            self._layer(l, new_tokens=p, attended_tokens=p, prefill=True, d2h_kv_tokens=wb)
            for l in range(self.model.num_layers)
        )
        if self.kv_offloaded:
            return StepPlan(-1, "prefill", p, self.batch, layers, 0, kept)
        return StepPlan(-1, "prefill", p, self.batch, layers, kept, 0)

    def decode(self, step: int) -> StepPlan | OutOfMemory:
        n = self.sc.workload.prompt_len + step + 1
        kept = self.kept_tokens(n)
        oom = self._fits(kept, step)
        if oom:
            return oom
        if self.kv_offloaded:  # each layer's cache comes up, the new token goes down
            layers = tuple(
                self._layer(l, attended_tokens=kept, h2d_kv_tokens=kept - 1, d2h_kv_tokens=1, kv_pageable=True)
                for l in range(self.model.num_layers)
            )
            return StepPlan(step, "II", n, self.batch, layers, 0, kept)
        layers = tuple(self._layer(l, attended_tokens=kept) for l in range(self.model.num_layers))
        return StepPlan(step, "I", n, self.batch, layers, kept, 0)


class AcceleratePolicy(GpuKvPolicy):
    name = "accelerate"
    sync = True
    pageable = True
    attention_passes = HF_ATTENTION_PASSES

    def __init__(self, scenario, coster) -> None:
        assert isinstance(scenario.policy, AcceleratePolicyConfig)
        self.stream_all = scenario.policy.device_map == "cpu"
        self.weight_offload = scenario.policy.device_map != "gpu"
        self.kv_offloaded = scenario.policy.cache == "offloaded"
        super().__init__(scenario, coster)


class ZeroInferencePolicy(GpuKvPolicy):
    name = "zero-inference"
    stream_all = True
    attention_passes = HF_ATTENTION_PASSES

    def __init__(self, scenario, coster) -> None:
        assert isinstance(scenario.policy, ZeroInferencePolicyConfig)
        self.pageable = not scenario.policy.pin_memory
        super().__init__(scenario, coster)


class H2OPolicy(GpuKvPolicy):
    name = "h2o"

    def _min_kv_bytes(self) -> float:
        wl = self.sc.workload
        return self.batch * self.model.num_layers * self.coster.kv_bytes * self.kept_tokens(wl.prompt_len + wl.gen_len)

    def kept_tokens(self, n: int) -> int:
        assert isinstance(self.sc.policy, H2OPolicyConfig)
        b = self.sc.policy.kv_budget
        return n if b >= 1.0 else max(1, min(n, math.ceil(b * n - 1e-9)))
