"""vllm: vLLM's PagedAttention serving (SOSP 2023) as a policy.

Modelled: KV in fixed-size blocks on the GPU (block_size tokens, 16 by default), in the
memory the weights leave; continuous batching of `requests` requests (default: the batch
size) with at most `batch_size` running at once, admitted first-come first-served while
free blocks hold their prompt; each iteration is either a prefill of newly admitted (or
resumed) sequences or one decode step of all running ones; when a running sequence needs a
new block and none is free, the most recently admitted one is preempted: by recompute
(default; its blocks are freed and it later re-prefills prompt + generated tokens) or by
swap (its blocks go to host memory over PCIe and come back before new admissions).
Generation lengths may vary per request (`gen_len_spread`), so sequences finish on their
own and free their blocks. Weights must fit on the GPU; attention is dense.
Left out: chunked prefill, prefix caching, the scheduler's CPU overhead, CUDA graphs,
and sampling.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..hardware import GB
from ..memory import MemoryLayout, plan_memory
from ..plan import LayerPlan, OutOfMemory, Phase, StepPlan
from .base import Policy


@dataclass
class _Req:
    rid: int
    target: int  # tokens to generate
    generated: int = 0
    blocks: int = 0  # GPU blocks held
    swapped_blocks: int = 0

    def length(self, prompt: int) -> int:
        return prompt + self.generated


class VllmPolicy(Policy):
    name = "vllm"

    def __init__(self, scenario, coster) -> None:
        self.cfg = scenario.policy
        super().__init__(scenario, coster)
        wl = scenario.workload
        self.block_bytes = self.cfg.block_size * self.model.num_layers * coster.kv_bytes
        self.total_blocks = int(self.layout.kv_budget_bytes // self.block_bytes)
        self.swap_blocks = int(self.cfg.swap_space_gb * GB // self.block_bytes)
        n = self.cfg.requests or self.batch
        rng = np.random.default_rng(scenario.seed)
        spread = self.cfg.gen_len_spread
        lens = np.rint(wl.gen_len * (1 + spread * (2 * rng.random(n) - 1))).astype(int).clip(1)
        self.reqs = [_Req(i, int(t)) for i, t in enumerate(lens)]
        self.preemptions = 0
        self.swap_outs = 0
        self.recomputed_tokens = 0
        self.finished: dict[int, int] = {}
        self.preempt_log: list[tuple[int, int]] = []  # (blocks needed, blocks free) at each preemption
        self.peak_used_blocks = 0

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

    def prefill(self) -> StepPlan | OutOfMemory:  # the run is driven by plans()
        raise NotImplementedError

    def decode(self, step: int) -> StepPlan | OutOfMemory:
        raise NotImplementedError

    def _blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.cfg.block_size)

    def _plan(
        self,
        step: int,
        phase: Phase,
        seqs: list[_Req],
        prefill: bool,
        out: int,
        h2d_tokens: int = 0,
        d2h_tokens: int = 0,
        used: int = 0,
        swapped: int = 0,
    ) -> StepPlan:
        p = self.sc.workload.prompt_len
        k = max(1, len(seqs))
        mean_len = round(sum(r.length(p) for r in seqs) / k) if seqs else p
        per_seq_in, per_seq_out = round(h2d_tokens / k), round(d2h_tokens / k)
        lp = LayerPlan(
            new_tokens=mean_len if prefill else 1,
            attended_tokens=mean_len,
            prefill=prefill,
            seqs=k,
            h2d_kv_tokens=per_seq_in,
            d2h_kv_tokens=per_seq_out,
            contiguous_fetch=True,
        )
        lay = self.layout
        self.peak_used_blocks = max(self.peak_used_blocks, used)
        gpu = lay.gpu_static_bytes + used * self.block_bytes
        cpu = lay.cpu_static_bytes + swapped * self.block_bytes
        return StepPlan(
            step,
            phase,
            mean_len,
            k,
            (lp,) * self.model.num_layers,
            used * self.cfg.block_size // max(1, k),
            swapped * self.cfg.block_size // max(1, k),
            tokens_out=out,
            gpu_bytes=gpu,
            cpu_bytes=cpu,
        )

    def plans(self) -> Iterator[StepPlan | OutOfMemory]:
        p = self.sc.workload.prompt_len
        free = self.total_blocks
        if self._blocks_for(p + 1) > free:
            yield OutOfMemory(
                "gpu",
                f"one sequence of {p + 1} tokens needs {self._blocks_for(p + 1)} blocks; "
                f"the GPU has {free} ({self.layout.kv_budget_bytes / GB:.2f} GB for KV)",
                -1,
            )
            return
        waiting: deque[_Req] = deque(self.reqs)
        swapped: deque[_Req] = deque()
        running: list[_Req] = []
        swap_used = 0
        step = 0
        while waiting or running or swapped:
            # 1. swapped sequences come back first
            if swapped:
                back: list[_Req] = []
                moved = 0
                while swapped and swapped[0].swapped_blocks <= free and len(running) + len(back) < self.batch:
                    r = swapped.popleft()
                    free -= r.swapped_blocks
                    swap_used -= r.swapped_blocks
                    r.blocks, r.swapped_blocks = r.swapped_blocks, 0
                    moved += r.blocks * self.cfg.block_size
                    back.append(r)
                if back:
                    running += back
                    yield self._plan(
                        step,
                        "II",
                        running,
                        False,
                        len(running),
                        h2d_tokens=moved,
                        used=self.total_blocks - free,
                        swapped=swap_used,
                    )
                    step += 1
                    self._advance(running)
                    free, running = self._finish(running, free)
                    continue
            # 2. admit waiting requests (prefill) while blocks and slots allow
            admitted: list[_Req] = []
            if not swapped:
                while waiting and len(running) + len(admitted) < self.batch:
                    need = self._blocks_for(waiting[0].length(p) + 1)
                    if need > free:
                        break
                    r = waiting.popleft()
                    r.blocks = need
                    free -= need
                    admitted.append(r)
            if admitted:
                self.recomputed_tokens += sum(r.generated for r in admitted)
                yield self._plan(
                    step, "prefill", admitted, True, len(admitted), used=self.total_blocks - free, swapped=swap_used
                )
                step += 1
                running += admitted
                self._advance(admitted)
                free, running = self._finish(running, free)
                continue
            if not running:
                # nothing can run: the head request can never fit
                r = waiting[0] if waiting else swapped[0]
                yield OutOfMemory(
                    "gpu",
                    f"request {r.rid} ({r.length(p)} tokens) cannot fit in {self.total_blocks} KV blocks even alone",
                    step,
                )
                return
            # 3. decode: grow blocks, preempting the newest sequences when none are free
            out_tokens = 0
            i = 0
            while i < len(running):
                r = running[i]
                need = self._blocks_for(r.length(p) + 1) - r.blocks
                while need > free and len(running) > 1:
                    self.preempt_log.append((need, free))
                    victim = running.pop()  # the most recently admitted
                    self.preemptions += 1
                    if self.cfg.preemption == "swap" and swap_used + victim.blocks <= self.swap_blocks:
                        self.swap_outs += 1
                        swap_used += victim.blocks
                        victim.swapped_blocks = victim.blocks
                        out_tokens += victim.blocks * self.cfg.block_size
                        swapped.append(victim)
                    else:
                        waiting.appendleft(victim)  # recompute: its KV is dropped
                    free += victim.blocks
                    victim.blocks = 0
                    if victim is r:
                        break
                if r not in running:
                    break
                if need > free:
                    yield OutOfMemory("gpu", f"sequence {r.rid} alone outgrows the {self.total_blocks} KV blocks", step)
                    return
                r.blocks += need
                free -= need
                i += 1
            yield self._plan(
                step,
                "I",
                running,
                False,
                len(running),
                d2h_tokens=out_tokens,
                used=self.total_blocks - free,
                swapped=swap_used,
            )
            step += 1
            self._advance(running)
            free, running = self._finish(running, free)

    def _advance(self, seqs: list[_Req]) -> None:
        for r in seqs:
            r.generated += 1

    def _finish(self, running: list[_Req], free: int) -> tuple[int, list[_Req]]:
        keep = []
        for r in running:
            if r.generated >= r.target:
                self.finished[r.rid] = r.generated
                free += r.blocks
                r.blocks = 0
            else:
                keep.append(r)
        return free, keep

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out.update(
            vllm={
                "kv_blocks": self.total_blocks,
                "block_size": self.cfg.block_size,
                "requests": len(self.reqs),
                "finished": len(self.finished),
                "preemptions": self.preemptions,
                "swap_outs": self.swap_outs,
                "re_prefilled_generated_tokens": self.recomputed_tokens,
                "preemption_mode": self.cfg.preemption,
            }
        )
        return out
