"""dense-gpu: everything on the GPU, dense attention over the whole cache.

The upper bound a single GPU reaches when memory is not the limit; out of memory as soon
as weights, workspace and the growing KV cache no longer fit.
"""

from __future__ import annotations

from ..hardware import GB
from ..memory import MemoryLayout, plan_memory
from ..plan import LayerPlan, OutOfMemory, StepPlan
from .base import Policy


class DenseGpuPolicy(Policy):
    name = "dense-gpu"

    def plan_layout(self) -> MemoryLayout:
        hw, pol = self.sc.hardware, self.sc.policy
        budget = pol.gpu_kv_budget_gb * GB if pol.gpu_kv_budget_gb is not None else None
        return plan_memory(self.model, self.batch, self.sc.workload.prompt_len, hw.gpu_memory_bytes,
                           hw.cpu_memory_bytes, hw.gpu_reserved_gb * GB, budget, 0.0, allow_weight_offload=False)

    def _fits(self, n: int, step: int) -> OutOfMemory | None:
        cap = self.kv_tokens_capacity(self.layout.kv_budget_bytes)
        if n > cap:
            need = n * self.batch * self.model.num_layers * self.coster.kv_bytes
            return OutOfMemory("gpu", (
                f"KV cache of {n} tokens x batch {self.batch} needs {need / GB:.2f} GB; "
                f"the GPU has {self.layout.kv_budget_bytes / GB:.2f} GB for KV (holds {cap} tokens per sequence)"), step)
        return None

    def prefill(self) -> StepPlan | OutOfMemory:
        p = self.sc.workload.prompt_len
        oom = self._fits(p, -1)
        if oom:
            return oom
        lp = LayerPlan(new_tokens=p, attended_tokens=p, prefill=True)
        return StepPlan(-1, "prefill", p, self.batch, (lp,) * self.model.num_layers, p, 0)

    def decode(self, step: int) -> StepPlan | OutOfMemory:
        n = self.sc.workload.prompt_len + step + 1
        oom = self._fits(n, step)
        if oom:
            return oom
        lp = LayerPlan(new_tokens=1, attended_tokens=n)
        return StepPlan(step, "I", n, self.batch, (lp,) * self.model.num_layers, n, 0)
