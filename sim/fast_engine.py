"""The default engine: the event model's schedule, computed in closed form.

Each resource of a step in the full event model (``engine.Engine``, ``--exact``) is a
sequential process that waits for events of the others: the CPU worker's gathers (or the
issuing thread's, inline), the host's issue, the H2D copies, the GPU's compute, the D2H
write-backs. Every wait is on a layer at or before the one in hand, so the same event
times follow from one pass over the layers, each a max of what it waits for plus its own
duration (a max-plus recurrence), in an order that respects those waits: a layer's gather,
its issue, its copy, its compute. No event queue, no generators: the same answers
(``tests/test_fast_engine.py`` holds every result field within 0.5% of the full model
over the bundled scenarios and every policy) several times faster.

Trace events are kept as each step's per-layer times and rendered only when read
(``EventLog``), under the same cap as the full model's.
"""

from __future__ import annotations

import time
from typing import Any

from .engine import RUN_AHEAD_LAYERS, STAGING_DEPTH, EngineBase, EngineResult, StepSetup
from .plan import OutOfMemory, StepPlan
from .policies.base import Policy
from .step_cost import LayerTimes, StepCoster

Event = tuple[str, str, float, float, dict[str, Any]]


class FastEngine(EngineBase):
    def __init__(self, policy: Policy, max_layer_events: int = 250_000, coster: StepCoster | None = None) -> None:
        super().__init__(policy, max_layer_events, coster)
        self._t = 0.0
        self._tail_end: float | None = None  # when the last step's write-backs have landed

    @property
    def now(self) -> float:
        return self._t

    def run(self) -> EngineResult:
        wall0 = time.perf_counter()
        oom = self.policy.static_check()
        if oom:
            self.oom = oom
        else:
            for plan in self.policy.plans():
                if isinstance(plan, OutOfMemory):
                    self.oom = plan
                    break
                oom = self._apply_memory(plan)
                if oom:
                    self.oom = oom
                    break
                st = self._setup(plan)
                self._t = self._moving_step(plan, st) if st.moves else self._still_step(plan, st)
                self._record(plan, st.start, st.times)
        total = self._t if self._tail_end is None else max(self._t, self._tail_end)
        return self._result(total, time.perf_counter() - wall0)

    def _moving_step(self, plan: StepPlan, st: StepSetup) -> float:
        """The step's end; sets the host's free time and the write-back tail. The copy and
        compute recurrences are written out inline in both branches: this is the hot loop."""
        times, start, h0, sel_end = st.times, st.start, st.h0, st.sel_end
        L = len(times)
        lags = [max(lp.fetch_lag, int(lp.sync_fetch)) for lp in plan.layers]
        staged = [not lp.contiguous_fetch for lp in plan.layers]  # token gathers go through staging
        gathered = [0.0] * L
        loaded = [0.0] * L
        computed = [0.0] * L
        issue_at = [0.0] * L  # where the trace puts the issue span
        g_at = [0.0] * L  # gather starts
        h_at = [0.0] * L  # copy starts
        c_at = [0.0] * L  # compute starts
        D = STAGING_DEPTH
        t_h2d = t_gpu = max(start, sel_end)  # the copy engine and the GPU start after the selection
        if self._inline:
            # the real backend's inline fetch: the issuing thread gathers layer 0's rows,
            # then after issuing layer l gathers up to layer l + 2, and waits for the GPU
            # to finish layer l - 2 before it goes on (the executor's throttle)
            T = max(start, h0)
            nxt = 0
            for l in range(L):
                t = times[l]
                # a layer not fetched ahead (layer 0): its own rows first
                while nxt <= l:
                    tj = times[nxt]
                    if tj.gather_s > 0:
                        if nxt >= D and staged[nxt]:
                            T = max(T, loaded[nxt - D])  # its pinned buffer's last copy is out
                        g_at[nxt] = T
                        T += tj.gather_s
                    gathered[nxt] = T
                    nxt += 1
                # issue layer l
                issuing = issue_at[l] = T
                T += t.host_s
                # its copy, then its compute
                c = max(t_h2d, gathered[l])
                if lags[l] and l >= lags[l]:
                    c = max(c, computed[l - lags[l]])  # no prefetch, or one layer's (Accelerate, FlexGen)
                if t.h2d_s > 0:
                    if l >= D and staged[l]:
                        c = max(c, computed[l - D])  # its GPU buffer's last rows are consumed
                    h_at[l] = c
                    c += t.h2d_s
                loaded[l] = t_h2d = c
                g = c_at[l] = max(t_gpu, c, issuing)
                computed[l] = t_gpu = max(g + t.compute_s, T)
                last = min(l + D, L - 1)
                while nxt <= last:
                    tj = times[nxt]
                    if tj.gather_s > 0:
                        if nxt >= D and staged[nxt]:
                            T = max(T, loaded[nxt - D])
                        g_at[nxt] = T
                        T += tj.gather_s
                    gathered[nxt] = T
                    nxt += 1
                if l >= RUN_AHEAD_LAYERS:
                    T = max(T, computed[l - RUN_AHEAD_LAYERS])
            self._host_done(T, st.flush, plan.step)
        else:
            # a CPU worker gathers (after the round trip, if the step has one); the host
            # waits for a layer's rows before issuing it
            tc = h0 if plan.host_round_trip and h0 > start else start
            now_h, h = start, h0
            for l in range(L):
                t = times[l]
                if t.gather_s > 0:
                    if l >= D and staged[l]:
                        tc = max(tc, loaded[l - D])
                    g_at[l] = tc
                    tc += t.gather_s
                gathered[l] = tc
                if t.gather_s > 0 or t.h2d_s > 0:
                    now_h = max(now_h, tc)
                    h = max(h, now_h)
                now_h = max(now_h, h)
                issue_at[l] = h
                h += t.host_s
                c = max(t_h2d, tc)
                if lags[l] and l >= lags[l]:
                    c = max(c, computed[l - lags[l]])
                if t.h2d_s > 0:
                    if l >= D and staged[l]:
                        c = max(c, computed[l - D])
                    h_at[l] = c
                    c += t.h2d_s
                loaded[l] = t_h2d = c
                g = c_at[l] = max(t_gpu, c, now_h)
                computed[l] = t_gpu = max(g + t.compute_s, h)
            self._host_done(h, st.flush, plan.step)
        end = t_gpu + st.head_s
        d_at: list[float] | None = None
        if any(t.d2h_s for t in times):
            d_at = [0.0] * L
            td = start if self._tail_end is None else max(start, self._tail_end)
            for l in range(L):
                td = max(td, computed[l])
                d = times[l].d2h_s
                if d > 0:
                    d_at[l] = td
                    td += d
            self._tail_end = td
        self._sim_events += 9 * L
        if self._trace_cut is None:
            arrays = (g_at, issue_at, h_at, c_at, computed, d_at)
            n = _count(times, c_at, computed, d_at) + (st.head_s > 0)
            self.log.later(_renderer(plan.step, times, arrays, t_gpu, st.head_s), n)
        return end


def _count(times: list[LayerTimes], c_at: list[float], c_end: list[float], d_at: list[float] | None) -> int:
    """How many layer events ``_renderer`` will append (the trace cap counts them now)."""
    n = 0
    for t, s, e in zip(times, c_at, c_end, strict=True):
        n += (t.gather_s > 0) + (t.host_s > 0) + (t.h2d_s > 0) + (e > s) + (d_at is not None and t.d2h_s > 0)
    return n


def _renderer(
    step: int,
    times: list[LayerTimes],
    arrays: tuple[list[float], list[float], list[float], list[float], list[float], list[float] | None],
    head_at: float,
    head_s: float,
) -> Any:
    """The step's trace events, as the full model logs them, rendered when read."""
    g_at, issue_at, h_at, c_at, c_end, d_at = arrays

    def render(out: list[Event]) -> None:
        for l, t in enumerate(times):
            if t.gather_s > 0:
                out.append(("CPU", f"gather L{l}", g_at[l], t.gather_s, {"step": step}))
            if t.host_s > 0:
                out.append(("Host", f"issue L{l}", issue_at[l], t.host_s, {"step": step}))
            if t.h2d_s > 0:
                out.append(("H2D", f"L{l}", h_at[l], t.h2d_s, {"step": step, "bytes": t.h2d_bytes}))
            if c_end[l] - c_at[l] > 0:
                out.append(("GPU compute", f"L{l}", c_at[l], c_end[l] - c_at[l], {"step": step}))
            if d_at is not None and t.d2h_s > 0:
                out.append(("D2H", f"L{l}", d_at[l], t.d2h_s, {"step": step, "bytes": t.d2h_bytes}))
        if head_s > 0:
            out.append(("GPU compute", "lm_head", head_at, head_s, {"step": step}))

    return render
