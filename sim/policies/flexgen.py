"""flexgen: FlexGen's offloading (ICML 2023) as a policy.

Modelled: the zig-zag block schedule (a block of gpu_batch_size x num_gpu_batches
sequences goes through one layer at a time, so a layer's weights cross PCIe once per block
and step, and each GPU batch's CPU-resident KV crosses for its attention); the placement
fractions wg (weights on GPU) and cg (KV cache on GPU), activations on the GPU; the policy
search as a linear program over (wg, cg) for each (gpu_batch_size, num_gpu_batches) that
divides the batch, minimising the per-layer time max(compute, PCIe, CPU) from the cost
model under the GPU and host memory limits (scipy ``linprog``); dense attention over the
whole cache; optional attention on the CPU for the CPU-resident KV (``cpu_cache_compute``);
optional 4-bit group-wise compression of weights and/or KV (4 bits + fp16 scale and min
per 64 elements: 4.5 bits; de-compression costs one pass on the GPU).
Left out: disk offload, activation offload, the fraction of attention FlexGen overlaps
across GPU batches beyond the per-layer pipeline, and its exact I/O scheduling.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import linprog

from ..errors import InputError
from ..hardware import GB
from ..memory import MemoryLayout, workspace_bytes
from ..models import layer_weight_bytes, weight_bytes
from ..plan import LayerPlan, OutOfMemory, StepPlan
from .base import Policy

COMPRESSED_FRACTION = 4.5 / 16.0  # 4-bit values + fp16 scale and min per group of 64


@dataclass(frozen=True)
class PlacementProblem:
    """Per-layer, per-step quantities of one (gpu_batch_size, num_gpu_batches) choice."""

    compute_s: float  # GPU compute of one layer for the whole block (attention all on GPU)
    compute_attn_cpu_s: float  # with cpu_cache_compute: GPU compute saved per unit of (1 - cg)
    weight_layer_bytes: float  # one layer's streamed bytes if all its weights were on host
    kv_layer_bytes: float  # one layer's KV for the block at the mean context
    h2d_s_per_byte: float
    cpu_attn_s_per_byte: float  # with cpu_cache_compute: CPU time per KV byte attended there
    cpu_cache_compute: bool
    gpu_free_bytes: float  # GPU memory for weights-on-GPU + KV-on-GPU
    cpu_free_bytes: float
    weights_total_bytes: float  # all layers' weights (stored size)
    kv_total_bytes: float  # the whole cache at the longest context (stored size)


@dataclass(frozen=True)
class Placement:
    wg: float
    cg: float
    layer_time_s: float


def solve_placement(p: PlacementProblem) -> Placement | None:
    """min t over x = (wg, cg, t) subject to
        t >= compute (- (1 - cg) * saved GPU attention, with cpu_cache_compute)
        t >= (1 - wg) W h + (1 - cg) K h          (PCIe; without cpu_cache_compute)
        t >= (1 - wg) W h                          (PCIe; with cpu_cache_compute)
        t >= (1 - cg) K c                          (CPU attention; with cpu_cache_compute)
        wg Wtot + cg Ktot <= GPU free;  (1 - wg) Wtot + (1 - cg) Ktot <= CPU free
    None when infeasible."""
    W, K, h = p.weight_layer_bytes, p.kv_layer_bytes, p.h2d_s_per_byte
    A, b = [], []
    if p.cpu_cache_compute:
        # t >= compute - (1 - cg) s  ->  -s cg - t <= -(compute - s)
        A.append([0.0, -p.compute_attn_cpu_s, -1.0])
        b.append(-(p.compute_s - p.compute_attn_cpu_s))
        A.append([-W * h, 0.0, -1.0])
        b.append(-W * h)
        A.append([0.0, -K * p.cpu_attn_s_per_byte, -1.0])
        b.append(-K * p.cpu_attn_s_per_byte)
    else:
        A.append([0.0, 0.0, -1.0])
        b.append(-p.compute_s)
        A.append([-W * h, -K * h, -1.0])
        b.append(-(W + K) * h)
    A.append([p.weights_total_bytes, p.kv_total_bytes, 0.0])
    b.append(p.gpu_free_bytes)
    A.append([-p.weights_total_bytes, -p.kv_total_bytes, 0.0])
    b.append(p.cpu_free_bytes - p.weights_total_bytes - p.kv_total_bytes)
    A_ = np.array(A, dtype=float)
    b_ = np.array(b, dtype=float)
    norm = np.maximum(np.abs(A_).max(axis=1), np.abs(b_))  # rows of seconds and of bytes: scale each
    norm[norm == 0] = 1.0
    # a tiny preference for more on the GPU breaks ties (same time, less PCIe traffic)
    res = linprog(
        c=[-1e-9, -1e-9, 1.0],
        A_ub=A_ / norm[:, None],
        b_ub=b_ / norm,
        bounds=[(0, 1), (0, 1), (0, None)],
        method="highs",
    )
    if not res.success:
        return None
    wg, cg, t = (float(v) for v in res.x)
    return Placement(min(1.0, max(0.0, wg)), min(1.0, max(0.0, cg)), t)


class FlexGenPolicy(Policy):
    name = "flexgen"

    def __init__(self, scenario, coster) -> None:
        cfg = scenario.policy
        self.cfg = cfg
        if cfg.compress_cache:
            coster.kv_bytes = math.ceil(coster.kv_fp16_bytes * COMPRESSED_FRACTION)
            coster.int8_kv = True  # de-quantisation overhead inside attention, as for INT8
        self.w_factor = COMPRESSED_FRACTION if cfg.compress_weight else 1.0
        super().__init__(scenario, coster)

    def plan_layout(self) -> MemoryLayout:
        hw, m, wl = self.sc.hardware, self.model, self.sc.workload
        lw = layer_weight_bytes(m) * self.w_factor
        non_layer = weight_bytes(m) - m.num_layers * layer_weight_bytes(m)
        ws = workspace_bytes(m, self.batch, wl.prompt_len)
        reserved = hw.gpu_reserved_gb * GB
        gpu_free = hw.gpu_memory_bytes - reserved - ws - non_layer - 2 * lw
        cpu_free = hw.cpu_memory_bytes
        n_max = wl.prompt_len + wl.gen_len
        n_mean = wl.prompt_len + wl.gen_len / 2
        kvb = self.coster.kv_bytes
        best: tuple[float, int, Placement, bool] | None = None
        tried: list[dict[str, Any]] = []
        ccc_options = (False, True) if self.cfg.cpu_cache_compute == "auto" else (bool(self.cfg.cpu_cache_compute),)
        for ccc, gbs in ((c, g) for c in ccc_options for g in self._gpu_batch_sizes()):
            ngb = self.batch // gbs
            compute = ngb * (
                self.coster.dense_layer_compute_s(gbs, decode=True)
                + self.coster.cost.attention_decode_s(gbs * n_mean * kvb, self.coster.int8_kv)
            )
            attn_gpu = ngb * self.coster.cost.attention_decode_s(gbs * n_mean * kvb, self.coster.int8_kv)
            prob = PlacementProblem(
                compute_s=compute,
                compute_attn_cpu_s=attn_gpu,
                weight_layer_bytes=lw,
                kv_layer_bytes=self.batch * n_mean * kvb,
                h2d_s_per_byte=self._h2d_slope(),
                cpu_attn_s_per_byte=1.0 / (hw.cpu_gather_gbps * GB),
                cpu_cache_compute=ccc,
                gpu_free_bytes=gpu_free,
                cpu_free_bytes=cpu_free,
                weights_total_bytes=m.num_layers * lw,
                kv_total_bytes=self.batch * m.num_layers * n_max * kvb,
            )
            if self.cfg.weights_gpu_percent is not None or self.cfg.cache_gpu_percent is not None:
                pl = self._fixed(prob)
            else:
                pl = solve_placement(prob)
            tried.append(
                {
                    "gpu_batch_size": gbs,
                    "num_gpu_batches": ngb,
                    "cpu_cache_compute": ccc,
                    **(asdict(pl) if pl else {"infeasible": True}),
                }
            )
            if pl is not None and (best is None or pl.layer_time_s < best[0] - 1e-12):
                best = (pl.layer_time_s, gbs, pl, ccc)
        self.search = tried
        if best is None:
            raise InputError(
                "FlexGen's placement LP is infeasible for every GPU batch size: weights + KV cache "
                f"({(m.num_layers * lw + self.batch * m.num_layers * n_max * kvb) / GB:.1f} GB) exceed GPU + host "
                "memory; lower the batch or the sequence length, or enable compression",
                field="policy",
            )
        _, self.gbs, self.placement, self.ccc = best
        self.ngb = self.batch // self.gbs
        wg = self.placement.wg
        w_gpu = non_layer + 2 * lw + wg * m.num_layers * lw
        w_cpu = (1 - wg) * m.num_layers * lw
        kv_gpu = self.placement.cg * self.batch * m.num_layers * n_max * kvb
        return MemoryLayout(hw.gpu_memory_bytes, hw.cpu_memory_bytes, reserved, ws, w_gpu, w_cpu, 0, kv_gpu)

    def _fixed(self, prob: PlacementProblem) -> Placement | None:
        wg = (self.cfg.weights_gpu_percent if self.cfg.weights_gpu_percent is not None else 100.0) / 100
        cg = (self.cfg.cache_gpu_percent if self.cfg.cache_gpu_percent is not None else 100.0) / 100
        if wg * prob.weights_total_bytes + cg * prob.kv_total_bytes > prob.gpu_free_bytes:
            return None
        h = prob.h2d_s_per_byte
        t = max(prob.compute_s, (1 - wg) * prob.weight_layer_bytes * h + (1 - cg) * prob.kv_layer_bytes * h)
        return Placement(wg, cg, t)

    def _gpu_batch_sizes(self) -> list[int]:
        if self.cfg.gpu_batch_size is not None:
            if self.batch % self.cfg.gpu_batch_size:
                raise InputError(
                    f"gpu_batch_size {self.cfg.gpu_batch_size} does not divide batch_size {self.batch}",
                    field="policy.gpu_batch_size",
                )
            return [self.cfg.gpu_batch_size]
        # largest first: on a tie (PCIe-bound) the larger GPU batch wastes less compute
        return [g for g in range(self.batch, 0, -1) if self.batch % g == 0 and (g & (g - 1) == 0 or g == self.batch)]

    def _h2d_slope(self) -> float:
        c = self.coster.cost
        return (c.h2d_s(2e9) - c.h2d_s(1e9)) / 1e9

    # -- plans ---------------------------------------------------------------------------
    def _cpu_tokens(self, n: int) -> int:
        # rounding towards the host keeps the GPU share within what the LP budgeted
        return min(n, math.ceil((1.0 - self.placement.cg) * n - 1e-9))

    def _layers(self, n: int, new: int, prefill: bool, d2h: int) -> tuple[LayerPlan, ...]:
        m = self.model
        w_stream = int((1.0 - self.placement.wg) * layer_weight_bytes(m))
        cpu = self._cpu_tokens(n) if not prefill else 0
        ccc = self.ccc
        lp = LayerPlan(
            new_tokens=new,
            attended_tokens=n,
            prefill=prefill,
            weight_h2d_bytes=w_stream,
            weight_compression=self.w_factor,
            contiguous_fetch=True,
            sub_batches=self.ngb,
            h2d_kv_tokens=0 if ccc else cpu,
            cpu_attention_tokens=cpu if ccc else 0,
            d2h_kv_tokens=d2h,
        )
        return (lp,) * m.num_layers

    def prefill(self) -> StepPlan | OutOfMemory:
        p = self.sc.workload.prompt_len
        cpu = self._cpu_tokens(p)
        return StepPlan(-1, "prefill", p, self.batch, self._layers(p, p, True, cpu), p - cpu, cpu)

    def decode(self, step: int) -> StepPlan | OutOfMemory:
        n = self.sc.workload.prompt_len + step + 1
        cpu = self._cpu_tokens(n)
        d2h = cpu - self._cpu_tokens(n - 1)
        return StepPlan(step, "I" if cpu == 0 else "II", n, self.batch, self._layers(n, 1, False, d2h), n - cpu, cpu)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out.update(
            flexgen_policy={
                "gpu_batch_size": self.gbs,
                "num_gpu_batches": self.ngb,
                "weights_gpu_percent": round(100 * self.placement.wg, 2),
                "cache_gpu_percent": round(100 * self.placement.cg, 2),
                "activations_gpu_percent": 100.0,
                "cpu_cache_compute": self.ccc,
                "compress_weight": self.cfg.compress_weight,
                "compress_cache": self.cfg.compress_cache,
                "lp_layer_time_s": self.placement.layer_time_s,
            },
            flexgen_search=self.search,
        )
        return out
