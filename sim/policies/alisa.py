"""ALISA: Sparse Window Attention with three-phase token-level scheduling.

Per decode step with n cached tokens, SWA attends a = ceil((1 - s) n) tokens: a local
window of w = round(local_fraction * a) recent tokens plus g = a - w globally important
earlier ones. The GPU holds C tokens per sequence and layer (its KV budget):

* Phase I   n <= C: all KV on the GPU, nothing moves.
* Phase II  n > C: the n - C tokens the GPU cannot hold live on the host (the token the
  cache evicts each step is written back, D2H; a fetched token keeps its host copy). Global selections not in the GPU cache
  cross PCIe as KV: gathered on the CPU into pinned staging, then one H2D copy per layer,
  the next layer's fetch overlapping this layer's compute.
* Phase III a share r of those host-resident selections is fetched as the layer input x
  (hidden_size elements instead of 2 kv_dim) and its K, V recomputed on the GPU. r is
  chosen each step to minimise the cost model's pipelined step time. Host memory holds x
  for every spilled token while recompute is on; if host memory runs short, KV of a share
  r_min of host tokens is dropped, and those must be recomputed (r >= r_min).

The GPU budget is split into a staging area (two layers' worth of fetched tokens, so the
next layer's fetch can land while this layer computes) and a resident cache of C tokens
per sequence and layer: the newest min(C, w) window tokens and K = max(0, C - w) earlier
tokens (recently selected ones). Misses per step and layer:

* window tokens beyond the cache: max(0, w - C), fetched every step;
* the (1 - churn) g selections kept from the last step, resident while K holds them:
  (1 - churn) g (1 - min(1, K / g));
* the churn g new selections, resident with probability max(0, K - g) / (n - w - g), the
  share of other earlier tokens the cache still holds.

churn is a constant (`selection_churn`, our choice) or, per step and layer, read from a
selection trace recorded on a real model. Counts are rounded stochastically with the
scenario's seed, so runs are reproducible.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..hardware import GB
from ..memory import MemoryLayout, plan_memory
from ..plan import LayerPlan, OutOfMemory, StepPlan
from ..scenario import AlisaPolicyConfig
from ..selection import ChurnModel, read_trace
from .base import Policy

R_GRID = tuple(i / 20 for i in range(21))


def swa_budget(n: int, kv_sparsity: float, local_fraction: float) -> tuple[int, int]:
    """(attended, window) for n cached tokens: attended = ceil((1-s) n), window = round(lf * a)."""
    a = n if kv_sparsity <= 0 else max(1, math.ceil((1.0 - kv_sparsity) * n - 1e-9))
    a = min(a, n)
    w = min(a, max(1, round(local_fraction * a)))
    return a, w


class AlisaPolicy(Policy):
    name = "alisa"

    def __init__(self, scenario, coster) -> None:  # type: ignore[no-untyped-def]
        self.cfg: AlisaPolicyConfig = scenario.policy
        super().__init__(scenario, coster)
        trace = read_trace(self.cfg.selection_trace) if self.cfg.selection_trace else None
        self.churn = ChurnModel(self.cfg.selection_churn, trace, self.model.num_layers)
        # one uniform per (step, layer): counter-based, so a change of phase timing
        # (another budget or sparsity) does not shift the rounding of later steps
        self.u = np.random.default_rng(scenario.seed).random((max(1, scenario.workload.gen_len), self.model.num_layers))
        wl = scenario.workload
        self.a_max, _ = swa_budget(wl.prompt_len + wl.gen_len, self.cfg.kv_sparsity, self.cfg.local_fraction)
        self.staging_bytes = 2 * self.batch * self.a_max * max(self.coster.kv_bytes, self.coster.hidden_bytes)
        self.C = self.kv_tokens_capacity(max(0.0, self.layout.kv_budget_bytes - self.staging_bytes))
        self.host_tokens = 0          # per sequence and layer: tokens with a host copy
        self.r_min = 0.0              # share of host tokens whose KV was dropped
        self.recompute_steps = 0
        self.r_history: list[float] = []

    # -- layout ----------------------------------------------------------------
    def plan_layout(self) -> MemoryLayout:
        hw = self.sc.hardware
        budget = self.cfg.gpu_kv_budget_gb * GB if self.cfg.gpu_kv_budget_gb is not None else None
        wl = self.sc.workload
        a_max, _ = swa_budget(wl.prompt_len + wl.gen_len, self.cfg.kv_sparsity, self.cfg.local_fraction)
        # without an explicit budget, weights come first: KV spills to host token by token,
        # while a streamed layer costs all its weights every step. Reserve only the fetch
        # staging plus a small resident cache (64 tokens per sequence and layer).
        min_kv = (self.batch * self.model.num_layers * self.coster.kv_bytes * min(64, a_max)
                  + 2 * self.batch * a_max * max(self.coster.kv_bytes, self.coster.hidden_bytes))
        return plan_memory(self.model, self.batch, wl.prompt_len, hw.gpu_memory_bytes, hw.cpu_memory_bytes,
                           hw.gpu_reserved_gb * GB, budget, min_kv, allow_weight_offload=True)

    # -- memory ----------------------------------------------------------------
    def _host_bytes(self, host_tokens: int, r_min: float) -> float:
        per = self.coster.kv_bytes * (1.0 - r_min) + (self.coster.hidden_bytes if self.cfg.recompute else 0)
        return self.layout.cpu_static_bytes + self.batch * self.model.num_layers * host_tokens * per

    def _fit_host(self, host_tokens: int, step: int) -> OutOfMemory | None:
        """Raise r_min (drop KV, keep x) until host memory fits; OOM if even that fails."""
        cap = self.layout.cpu_capacity_bytes
        if self._host_bytes(host_tokens, self.r_min) <= cap:
            return None
        if not self.cfg.recompute:
            return OutOfMemory("cpu", (
                f"host KV of {host_tokens} tokens x batch {self.batch} needs "
                f"{self._host_bytes(host_tokens, 0.0) / GB:.2f} GB; host memory is {cap / GB:.2f} GB"), step)
        kv_all = self.batch * self.model.num_layers * host_tokens * self.coster.kv_bytes
        over = self._host_bytes(host_tokens, 0.0) - cap
        r = min(1.0, over / kv_all) if kv_all > 0 else 1.0
        if self._host_bytes(host_tokens, r) > cap * (1 + 1e-12):
            return OutOfMemory("cpu", (
                f"even with all host KV dropped, hidden states of {host_tokens} tokens x batch "
                f"{self.batch} exceed host memory ({cap / GB:.2f} GB)"), step)
        self.r_min = max(self.r_min, r)
        return None

    def _round(self, x: float, step: int, layer: int) -> int:
        """Stochastic rounding, monotone in x for a fixed (step, layer)."""
        base = math.floor(x)
        return base + int(self.u[step, layer] < (x - base))

    # -- plans -----------------------------------------------------------------
    def prefill(self) -> StepPlan | OutOfMemory:
        p = self.sc.workload.prompt_len
        L = self.model.num_layers
        a, w = swa_budget(p, self.cfg.kv_sparsity, self.cfg.local_fraction)
        if p <= self.C:
            layers = tuple(LayerPlan(new_tokens=p, attended_tokens=p, prefill=True,
                                     weight_h2d_bytes=self.weight_stream_bytes(l)) for l in range(L))
            return StepPlan(-1, "prefill", p, self.batch, layers, p, 0)
        if self.C < 1:
            return self._too_small(-1)
        spill = p - self.C
        oom = self._fit_host(spill, -1)
        if oom:
            return oom
        self.host_tokens = spill
        hid = spill if self.cfg.recompute else 0
        layers = tuple(LayerPlan(new_tokens=p, attended_tokens=p, prefill=True, d2h_kv_tokens=spill,
                                 d2h_hidden_tokens=hid, weight_h2d_bytes=self.weight_stream_bytes(l))
                       for l in range(L))
        return StepPlan(-1, "prefill", p, self.batch, layers, self.C, spill, hid, 0.0,
                        gpu_extra_bytes=self.staging_bytes, note="prompt exceeds GPU KV budget")

    def _too_small(self, step: int) -> OutOfMemory:
        return OutOfMemory("gpu", (
            f"GPU KV budget ({self.layout.kv_budget_bytes / GB:.2f} GB) leaves no resident KV after the "
            f"staging area for {self.a_max} fetched tokens x batch {self.batch} x 2 layers "
            f"({self.staging_bytes / GB:.2f} GB); raise policy.gpu_kv_budget_gb or kv_sparsity"), step)

    def _misses(self, n: int, a: int, w: int, churn: float) -> float:
        """Expected selected tokens not GPU-resident, per sequence and layer (see module doc)."""
        g = a - w
        C = self.C
        pool = n - w - g
        if g > 0:
            churn = min(churn, pool / g)  # no more new selections than unselected tokens
        window_miss = max(0, w - C)
        K = max(0, C - w)
        kept = (1.0 - churn) * g * (1.0 - min(1.0, K / g)) if g > 0 else 0.0
        p_new_resident = min(1.0, max(0, K - g) / pool) if pool > 0 else 1.0
        new = churn * g * (1.0 - p_new_resident)
        return window_miss + kept + new

    def decode(self, step: int) -> StepPlan | OutOfMemory:
        n = self.sc.workload.prompt_len + step + 1
        L = self.model.num_layers
        a, w = swa_budget(n, self.cfg.kv_sparsity, self.cfg.local_fraction)
        if n <= self.C:
            layers = tuple(LayerPlan(attended_tokens=a, weight_h2d_bytes=self.weight_stream_bytes(l))
                           for l in range(L))
            return StepPlan(step, "I", n, self.batch, layers, n, 0)
        if self.C < 1:
            return self._too_small(step)

        host = max(self.host_tokens, n - self.C)
        d2h = host - self.host_tokens
        oom = self._fit_host(host, step)
        if oom:
            return oom
        self.host_tokens = host

        churn = self.churn.at(step)
        misses = [self._round(self._misses(n, a, w, float(c)), step, l) for l, c in enumerate(churn)]
        r = self._choose_ratio(misses, a, d2h)
        layers = tuple(
            LayerPlan(attended_tokens=a, h2d_kv_tokens=m - round(r * m), recompute_tokens=round(r * m),
                      d2h_kv_tokens=d2h, d2h_hidden_tokens=d2h if self.cfg.recompute else 0,
                      weight_h2d_bytes=self.weight_stream_bytes(l))
            for l, m in enumerate(misses))
        recomputed = any(lp.recompute_tokens for lp in layers)
        self.recompute_steps += recomputed
        self.r_history.append(r)
        cpu_hidden = host if self.cfg.recompute else 0
        cpu_kv = host - math.ceil(self.r_min * host - 1e-9)  # dropped KV rounds up: stay within the host
        return StepPlan(step, "III" if recomputed else "II", n, self.batch, layers, self.C, cpu_kv,
                        cpu_hidden, r, gpu_extra_bytes=self.staging_bytes)

    def _choose_ratio(self, misses: list[int], a: int, d2h: int) -> float:
        """The recompute share minimising the pipelined step time (one representative layer)."""
        if not self.cfg.recompute:
            return 0.0
        if self.cfg.recompute_ratio != "auto":
            return max(float(self.cfg.recompute_ratio), self.r_min)
        m = round(sum(misses) / len(misses))
        if m == 0:
            return self.r_min
        L = self.model.num_layers
        best_r, best_t = self.r_min, math.inf
        for r in R_GRID:
            if r < self.r_min - 1e-12:
                continue
            rec = round(r * m)
            lp = LayerPlan(attended_tokens=a, h2d_kv_tokens=m - rec, recompute_tokens=rec,
                           d2h_kv_tokens=d2h, d2h_hidden_tokens=d2h)  # recompute is on here
            t = self.coster.layer_times(lp)
            # uniform layers through a 3-stage pipeline: fill + (L-1) x bottleneck stage
            est = t.gather_s + t.h2d_s + t.compute_s + (L - 1) * max(t.gather_s, t.h2d_s, t.compute_s)
            if est < best_t - 1e-15:
                best_r, best_t = r, est
        return max(best_r, self.r_min)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out.update(gpu_kv_tokens_per_seq_layer=self.C, final_recompute_ratio_min=self.r_min,
                   mean_recompute_ratio=float(np.mean(self.r_history)) if self.r_history else 0.0,
                   churn_source="trace" if not self.churn.uniform else f"constant {self.cfg.selection_churn}")
        return out
