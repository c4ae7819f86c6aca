"""dense-gpu: everything on the GPU, dense attention over the whole cache.

The upper bound a single GPU reaches when memory is not the limit; out of memory as soon
as weights, workspace and the growing KV cache no longer fit (weights are never offloaded).
"""

from __future__ import annotations

from ..hardware import GB
from ..memory import MemoryLayout, plan_memory
from .simple_baselines import GpuKvPolicy


class DenseGpuPolicy(GpuKvPolicy):
    name = "dense-gpu"

    def plan_layout(self) -> MemoryLayout:
        hw, pol = self.sc.hardware, self.sc.policy
        budget = pol.gpu_kv_budget_gb * GB if pol.gpu_kv_budget_gb is not None else None
        return plan_memory(
            self.model,
            self.batch,
            self.sc.workload.prompt_len,
            hw.gpu_memory_bytes,
            hw.cpu_memory_bytes,
            hw.gpu_reserved_gb * GB,
            budget,
            0.0,
            allow_weight_offload=False,
        )
