"""ALISA: Sparse Window Attention with three-phase token-level scheduling.

Per decode step with n cached tokens, SWA attends a = ceil((1 - s) n) tokens: a local
window of w = round(local_fraction * a) recent tokens plus g = a - w globally important
earlier ones. The GPU holds C tokens per sequence and layer (its KV budget):

* Phase I   n <= C: all KV on the GPU, nothing moves.
* Phase II  n > C: the n - C tokens the GPU cannot hold live only on the host. When a run
  will outgrow the cache, the host keeps a copy of every token, written as it is made
  (write-through: one token per sequence and layer per step, D2H, plus its layer input x
  with recompute on), so an eviction never waits on a write-back. Global selections not in the GPU cache
  cross PCIe as KV: gathered on the CPU into pinned staging, then one H2D copy per layer,
  the next layer's fetch overlapping this layer's compute (``gather: host``); or read
  straight from pinned host memory by a GPU kernel beside the compute (``gather: device``).
* Phase III a share r of those host-resident selections is fetched as the layer input x
  (hidden_size elements instead of 2 kv_dim) and its K, V recomputed on the GPU. r is
  chosen each step to minimise the cost model's pipelined step time. If host memory runs
  short, the KV of a share r_min of the host-only tokens is dropped (their x stays), and
  those must be recomputed (r >= r_min).

The GPU budget is split into SWA's importance scores (``swa_importance_bytes``), a staging
area (two layers' worth of fetched tokens, so the next layer's fetch can land while this
layer computes) and a resident cache of C tokens
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

from ..costs import SelectionShape
from ..hardware import GB
from ..memory import MemoryLayout, plan_memory
from ..models import swa_importance_bytes
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

    def __init__(self, scenario, coster) -> None:
        self.cfg: AlisaPolicyConfig = scenario.policy
        super().__init__(scenario, coster)
        trace = read_trace(self.cfg.selection_trace) if self.cfg.selection_trace else None
        self.churn = ChurnModel(self.cfg.selection_churn, trace, self.model.num_layers)
        # one uniform per (step, layer): counter-based, so a change of phase timing
        # (another budget or sparsity) does not shift the rounding of later steps
        self.u = np.random.default_rng(scenario.seed).random((max(1, scenario.workload.gen_len), self.model.num_layers))
        wl = scenario.workload
        self.n_max = wl.prompt_len + wl.gen_len
        self.a_max, _ = swa_budget(self.n_max, self.cfg.kv_sparsity, self.cfg.local_fraction)
        self.staging_bytes = self._staging_bytes()
        self.C = self.kv_tokens_capacity(
            max(0.0, self.layout.kv_budget_bytes - self.staging_bytes - self.importance_bytes())
        )
        # write-through: when the run will outgrow the GPU cache, every token's KV (and its
        # layer input x, with recompute) is copied to the host as it is made, so eviction
        # never waits on a write-back and any token can be fetched or recomputed later
        self.spills = self.n_max > self.C
        # the host gathers the fetched rows, so it needs each step's selection first (a
        # round trip); the device gather reads the selection on the GPU
        self.host_gathers = self.cfg.gather == "host"
        self.r_min = 0.0  # share of host-only tokens whose KV was dropped
        self.recompute_steps = 0
        self.r_history: list[float] = []
        # memos: equal layers are one object, and the ratio is a function of its inputs
        self._weights = [self.weight_stream_bytes(l) for l in range(self.model.num_layers)]
        self._layers: dict[tuple[int, ...], LayerPlan] = {}
        self._ratios: dict[tuple[int, int, int, int, float], float] = {}

    # -- layout ----------------------------------------------------------------
    def global_max(self) -> int:
        """The largest global part (a - w) of any decode step of the run (0 without SWA)."""
        if self.cfg.kv_sparsity <= 0:
            return 0
        P = self.sc.workload.prompt_len
        return max(
            a - w
            for a, w in (
                swa_budget(n, self.cfg.kv_sparsity, self.cfg.local_fraction) for n in range(P + 1, self.n_max + 1)
            )
        )

    def selection_shape(self) -> SelectionShape | None:
        """The fixed shapes of a spilling run's per-step selection (the real backend's
        ``SpillSelector``); None when the KV never spills."""
        if not self.spills:
            return None
        return SelectionShape(self.model.num_layers, self.batch, self.n_max, min(self.C, self.n_max), self.global_max())

    def importance_history(self) -> int:
        """Steps summed into importance (our default: the window at the longest context)."""
        wl = self.sc.workload
        if self.cfg.importance_history is not None:
            return self.cfg.importance_history
        return swa_budget(wl.prompt_len + wl.gen_len, self.cfg.kv_sparsity, self.cfg.local_fraction)[1]

    def importance_bytes(self) -> int:
        """SWA's scores and history ring on the GPU (none without sparsity)."""
        if self.cfg.kv_sparsity <= 0:
            return 0
        wl = self.sc.workload
        n_max = wl.prompt_len + wl.gen_len
        a_max, _ = swa_budget(n_max, self.cfg.kv_sparsity, self.cfg.local_fraction)
        return swa_importance_bytes(self.model, self.batch, n_max, self.importance_history(), max(wl.prompt_len, a_max))

    def _staging_bytes(self) -> float:
        wl = self.sc.workload
        a_max, _ = swa_budget(wl.prompt_len + wl.gen_len, self.cfg.kv_sparsity, self.cfg.local_fraction)
        return 2 * self.batch * a_max * max(self.coster.kv_bytes, self.coster.hidden_bytes)

    def plan_layout(self) -> MemoryLayout:
        hw = self.sc.hardware
        per_token = self.batch * self.model.num_layers * self.coster.kv_bytes
        extra = self._staging_bytes() + self.importance_bytes()
        if self.cfg.gpu_kv_budget_tokens is not None:
            budget = (self.cfg.gpu_kv_budget_tokens + 0.5) * per_token + extra  # + 0.5: no float floor loss
        elif self.cfg.gpu_kv_budget_gb is not None:
            budget = self.cfg.gpu_kv_budget_gb * GB
        else:
            budget = None
        wl = self.sc.workload
        a_max, _ = swa_budget(wl.prompt_len + wl.gen_len, self.cfg.kv_sparsity, self.cfg.local_fraction)
        # without an explicit budget, weights come first: KV spills to host token by token,
        # while a streamed layer costs all its weights every step. Reserve only the fetch
        # staging, the importance scores and a small resident cache (64 tokens per sequence and layer).
        min_kv = per_token * min(64, a_max) + extra
        return plan_memory(
            self.model,
            self.batch,
            wl.prompt_len,
            hw.gpu_memory_bytes,
            hw.cpu_memory_bytes,
            hw.gpu_reserved_gb * GB,
            budget,
            min_kv,
            allow_weight_offload=True,
        )

    # -- memory ----------------------------------------------------------------
    def _host_bytes(self, n: int, r_min: float) -> float:
        """Host copies of n tokens (write-through); KV of a share r_min of the host-only ones dropped."""
        host_only = max(0, n - self.C)
        kv_tokens = n - r_min * host_only
        x_tokens = n if self.cfg.recompute else 0
        per_seq_layer = kv_tokens * self.coster.kv_bytes + x_tokens * self.coster.hidden_bytes
        return self.layout.cpu_static_bytes + self.batch * self.model.num_layers * per_seq_layer

    def _fit_host(self, n: int, step: int) -> OutOfMemory | None:
        """Raise r_min (drop KV, keep x) until host memory fits; OOM if even that fails."""
        cap = self.layout.cpu_capacity_bytes
        if self._host_bytes(n, self.r_min) <= cap:
            return None
        if not self.cfg.recompute:
            return OutOfMemory(
                "cpu",
                (
                    f"host copy of KV for {n} tokens x batch {self.batch} needs "
                    f"{self._host_bytes(n, 0.0) / GB:.2f} GB; host memory is {cap / GB:.2f} GB"
                ),
                step,
            )
        host_only = max(0, n - self.C)
        kv_drop = self.batch * self.model.num_layers * host_only * self.coster.kv_bytes
        over = self._host_bytes(n, 0.0) - cap
        r = min(1.0, over / kv_drop) if kv_drop > 0 else 1.0
        if self._host_bytes(n, r) > cap * (1 + 1e-12):
            return OutOfMemory(
                "cpu",
                (
                    f"even with the KV of all {host_only} host-only tokens dropped, host copies for {n} tokens x "
                    f"batch {self.batch} exceed host memory ({cap / GB:.2f} GB)"
                ),
                step,
            )
        self.r_min = max(self.r_min, r)
        return None

    def _host_plan_fields(self, n: int) -> tuple[int, int]:
        """(cpu_kv_tokens, cpu_hidden_tokens) per sequence and layer after a step at context n."""
        if not self.spills:
            return 0, 0
        dropped = math.ceil(self.r_min * max(0, n - self.C) - 1e-9)  # round up: stay within the host
        return n - dropped, (n if self.cfg.recompute else 0)

    def _round_layers(self, x: np.ndarray, step: int) -> list[int]:
        """Each layer's expected count x[l], rounded stochastically: monotone in x for a
        fixed (step, layer)."""
        base = np.floor(x)
        return (base + (self.u[step] < (x - base))).astype(np.int64).tolist()

    def _layer(self, a: int, h2d: int, rec: int, wt: int, wx: int, l: int) -> LayerPlan:
        key = (a, h2d, rec, wt, wx, self._weights[l])
        lp = self._layers.get(key)
        if lp is None:
            lp = self._layers[key] = LayerPlan(
                attended_tokens=a,
                h2d_kv_tokens=h2d,
                recompute_tokens=rec,
                d2h_kv_tokens=wt,
                d2h_hidden_tokens=wx,
                weight_h2d_bytes=self._weights[l],
            )
        return lp

    def _extra_bytes(self) -> float:
        return (self.staging_bytes if self.spills else 0.0) + self.importance_bytes()

    # -- plans -----------------------------------------------------------------
    def prefill(self) -> StepPlan | OutOfMemory:
        p = self.sc.workload.prompt_len
        L = self.model.num_layers
        if self.C < 1:
            return self._too_small(-1)
        if self.spills:
            oom = self._fit_host(p, -1)
            if oom:
                return oom
        wt = p if self.spills else 0
        layers = tuple(
            LayerPlan(
                new_tokens=p,
                attended_tokens=p,
                prefill=True,
                d2h_kv_tokens=wt,
                d2h_hidden_tokens=wt if self.cfg.recompute else 0,
                weight_h2d_bytes=self.weight_stream_bytes(l),
            )
            for l in range(L)
        )
        cpu_kv, cpu_x = self._host_plan_fields(p)
        return StepPlan(
            -1,
            "prefill",
            p,
            self.batch,
            layers,
            min(p, self.C),
            cpu_kv,
            cpu_x,
            0.0,
            gpu_extra_bytes=self._extra_bytes(),
            note="prompt exceeds GPU KV budget" if p > self.C else "",
        )

    def _too_small(self, step: int) -> OutOfMemory:
        return OutOfMemory(
            "gpu",
            (
                f"GPU KV budget ({self.layout.kv_budget_bytes / GB:.2f} GB) holds {self.C} tokens per sequence and "
                f"layer after the staging area and importance scores ({self._extra_bytes() / GB:.2f} GB); "
                f"raise policy.gpu_kv_budget_gb (or gpu_kv_budget_tokens) or kv_sparsity"
            ),
            step,
        )

    def _misses(self, n: int, a: int, w: int, churn: np.ndarray) -> np.ndarray:
        """Expected selected tokens not GPU-resident, per sequence and layer (see module
        doc), for each layer's churn."""
        g = a - w
        C = self.C
        pool = n - w - g
        if g > 0:
            churn = np.minimum(churn, pool / g)  # no more new selections than unselected tokens
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
        wt = 1 if self.spills else 0  # write-through of the new token
        wx = wt if self.cfg.recompute else 0
        if self.C < 1:
            return self._too_small(step)
        if self.spills:
            oom = self._fit_host(n, step)
            if oom:
                return oom
        cpu_kv, cpu_x = self._host_plan_fields(n)
        if n <= self.C:
            layers = tuple(self._layer(a, 0, 0, wt, wx, l) for l in range(L))
            return StepPlan(
                step,
                "I",
                n,
                self.batch,
                layers,
                n,
                cpu_kv,
                cpu_x,
                gpu_extra_bytes=self._extra_bytes(),
                host_round_trip=self.spills and self.host_gathers,
            )
        misses = self._round_layers(self._misses(n, a, w, self.churn.at(step)), step)
        r = self._choose_ratio(misses, a, wt, wx)
        layers = tuple(self._layer(a, m - round(r * m), round(r * m), wt, wx, l) for l, m in enumerate(misses))
        recomputed = any(lp.recompute_tokens for lp in layers)
        self.recompute_steps += recomputed
        self.r_history.append(r)
        return StepPlan(
            step,
            "III" if recomputed else "II",
            n,
            self.batch,
            layers,
            self.C,
            cpu_kv,
            cpu_x,
            r,
            gpu_extra_bytes=self._extra_bytes(),
            host_round_trip=self.host_gathers,
        )

    def _choose_ratio(self, misses: list[int], a: int, d2h_kv: int, d2h_x: int) -> float:
        """The recompute share minimising the pipelined step time (one representative layer)."""
        if not self.cfg.recompute:
            return 0.0
        if self.cfg.recompute_ratio != "auto":
            return max(float(self.cfg.recompute_ratio), self.r_min)
        m = round(sum(misses) / len(misses))
        if m == 0:
            return self.r_min
        key = (m, a, d2h_kv, d2h_x, self.r_min)
        if key not in self._ratios:
            self._ratios[key] = self._best_ratio(m, a, d2h_kv, d2h_x)
        return self._ratios[key]

    def _best_ratio(self, m: int, a: int, d2h_kv: int, d2h_x: int) -> float:
        L = self.model.num_layers
        best_r, best_t = self.r_min, math.inf
        for r in R_GRID:
            if r < self.r_min - 1e-12:
                continue
            rec = round(r * m)
            lp = LayerPlan(
                attended_tokens=a,
                h2d_kv_tokens=m - rec,
                recompute_tokens=rec,
                d2h_kv_tokens=d2h_kv,
                d2h_hidden_tokens=d2h_x,
            )
            t = self.coster.layer_times(lp)
            gpu = max(t.compute_s, t.host_s)  # a layer's GPU work cannot end before the host has issued it
            host = self.coster.host_stage_s(t)  # inline fetch: the issuing thread gathers too
            # uniform layers through a 3-stage pipeline: fill + (L-1) x bottleneck stage
            est = t.gather_s + t.h2d_s + gpu + (L - 1) * max(t.gather_s, t.h2d_s, gpu, host)
            if est < best_t - 1e-15:
                best_r, best_t = r, est
        return max(best_r, self.r_min)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out.update(
            gpu_kv_tokens_per_seq_layer=self.C,
            final_recompute_ratio_min=self.r_min,
            mean_recompute_ratio=float(np.mean(self.r_history)) if self.r_history else 0.0,
            churn_source="trace" if not self.churn.uniform else f"constant {self.cfg.selection_churn}",
        )
        return out
