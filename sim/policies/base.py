"""What a scheduling policy is: a source of StepPlans, one per step."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from ..hardware import GB
from ..memory import MemoryLayout
from ..models import layer_weight_bytes
from ..plan import OutOfMemory, StepPlan
from ..scenario import Scenario
from ..step_cost import StepCoster


class Policy(ABC):
    """A scheduler. The engine asks for the prefill plan, then one plan per decode step,
    in order; a policy may keep state between steps. It answers OutOfMemory when a step
    cannot be placed."""

    name: str = "?"

    def __init__(self, scenario: Scenario, coster: StepCoster) -> None:
        self.sc = scenario
        self.coster = coster
        self.model = scenario.model
        self.batch = scenario.workload.batch_size
        self.layout: MemoryLayout = self.plan_layout()

    @abstractmethod
    def plan_layout(self) -> MemoryLayout: ...

    @abstractmethod
    def prefill(self) -> StepPlan | OutOfMemory: ...

    @abstractmethod
    def decode(self, step: int) -> StepPlan | OutOfMemory: ...

    def plans(self) -> Iterator[StepPlan | OutOfMemory]:
        """The run, step by step: prefill, then gen_len - 1 decode steps for a fixed batch.
        Policies that batch continuously (vLLM) override this. The engine stops at the first
        OutOfMemory."""
        yield self.prefill()
        for step in range(self.sc.workload.gen_len - 1):
            yield self.decode(step)

    def static_check(self) -> OutOfMemory | None:
        """A reason the policy cannot start at all (weights and workspace do not fit)."""
        lay = self.layout
        if lay.gpu_static_bytes > lay.gpu_capacity_bytes:
            return OutOfMemory(
                "gpu",
                (
                    f"weights on GPU ({lay.weights_gpu_bytes / GB:.2f} GB) + workspace "
                    f"({lay.workspace_bytes / GB:.2f} GB) + reserved ({lay.reserved_bytes / GB:.2f} GB) exceed "
                    f"GPU memory ({lay.gpu_capacity_bytes / GB:.2f} GB)"
                ),
                -1,
            )
        if lay.cpu_static_bytes > lay.cpu_capacity_bytes:
            return OutOfMemory("cpu", f"offloaded weights ({lay.cpu_static_bytes / GB:.2f} GB) exceed host memory", -1)
        return None

    def summary(self) -> dict[str, Any]:
        """Policy-specific facts for result.json."""
        lay = self.layout
        return {
            "kv_budget_bytes": int(lay.kv_budget_bytes),
            "weights_gpu_bytes": int(lay.weights_gpu_bytes),
            "weights_cpu_bytes": int(lay.weights_cpu_bytes),
            "offloaded_layers": lay.offloaded_layers,
        }

    # -- helpers shared by policies ------------------------------------------
    def weight_stream_bytes(self, layer: int) -> int:
        """Weights streamed for `layer` each step: the last `offloaded_layers` layers."""
        first_offloaded = self.model.num_layers - self.layout.offloaded_layers
        return layer_weight_bytes(self.model) if layer >= first_offloaded else 0

    def kv_tokens_capacity(self, bytes_: float) -> int:
        """Tokens per sequence and layer that `bytes_` of KV holds."""
        per = self.batch * self.model.num_layers * self.coster.kv_bytes
        return math.floor(bytes_ / per) if per > 0 else 0
