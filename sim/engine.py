"""SimPy engine: times a policy's StepPlans on a model of GPU, CPU, PCIe and memory.

Resources: one GPU compute stream, an H2D and a D2H copy engine (PCIe is full duplex,
so they are separate), one CPU worker that gathers host-resident KV rows into pinned
staging; GPU and host memory are capacity-limited pools (``simpy.Container``).

Within a step, each layer's work flows gather -> H2D -> compute -> D2H; each resource
serves layers in order, so the next layer's fetch overlaps this layer's compute and the
write-back of this layer overlaps the next one. Gathered rows pass through staging of
``STAGING_DEPTH`` buffers on each side (as in the real backend): a layer's gather waits
until the copy of the layer that last used its pinned buffer has finished, and its copy
until the GPU has consumed the rows last landed in its GPU buffer. A step's fetches start when the step
starts (its selection depends on the previous step's attention); its write-backs may
run on into the next step. A step whose layers move nothing runs as one GPU interval.

The host that issues the GPU work is a resource too (the profile's ``host`` costs; zero
in datasheet profiles): a layer's compute starts no earlier than the host begins issuing
it and ends no earlier than the host has issued all of it. The host runs ahead of the
GPU across steps, except where a step needs a GPU result first (``host_round_trip``),
and it waits for a layer's gathered rows before issuing that layer. Where the coster says
``inline_fetch`` (a measured host: the real backend's default), that same host thread
does the gathers, two layers ahead of the layer it issues, instead of a CPU worker, and
at a spilling step's end stores the step's write-through rows into the host copy
(``flush_s``) before it can issue the next step's selection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import simpy

from .plan import OutOfMemory, StepPlan
from .policies.base import Policy
from .step_cost import LayerTimes, StepCoster

LANES = ("GPU compute", "H2D", "D2H", "CPU", "Host")
STAGING_DEPTH = 2  # fetch staging buffers per side (pinned host, GPU landing)
RUN_AHEAD_LAYERS = 2  # the issuing thread stays at most this many layers ahead of the GPU


@dataclass
class StepRecord:
    step: int
    phase: str
    start_s: float
    end_s: float
    context_len: int
    attended_tokens: int
    h2d_bytes: float
    d2h_bytes: float
    recomputed_tokens: int
    recompute_ratio: float
    gpu_bytes: float
    cpu_bytes: float
    tokens_out: int = 0
    batch: int = 0

    @property
    def time_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class EngineResult:
    steps: list[StepRecord]  # prefill first (step -1), then decode steps
    log: EventLog  # trace events: lane, name, start, dur, args (``events``)
    memory_log: list[tuple[float, float, float]]  # time, gpu bytes, cpu bytes
    oom: OutOfMemory | None
    peak_gpu_bytes: float
    peak_cpu_bytes: float
    total_time_s: float
    sim_events: int
    sim_wall_s: float
    trace_truncated_at_step: int | None = None
    policy_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def events(self) -> list[tuple[str, str, float, float, dict[str, Any]]]:
        return self.log.events()


class EventLog:
    """Trace events, built when first read: the fast engine keeps each traced step's
    per-layer times and renders the (lane, name, start, dur, args) tuples only when a
    trace is written; a sweep never pays for them."""

    def __init__(self) -> None:
        self._done: list[tuple[str, str, float, float, dict[str, Any]]] = []
        self._pending: list[Callable[[list[tuple[str, str, float, float, dict[str, Any]]]], None]] = []
        self.count = 0  # events logged or promised: what the trace cap counts

    def add(self, event: tuple[str, str, float, float, dict[str, Any]]) -> None:
        self._done.append(event)
        self.count += 1

    def later(self, render: Callable[[list[tuple[str, str, float, float, dict[str, Any]]]], None], n: int) -> None:
        """``render`` appends at most ``n`` events when the log is read."""
        self._pending.append(render)
        self.count += n

    @classmethod
    def of(cls, events: list[tuple[str, str, float, float, dict[str, Any]]]) -> EventLog:
        log = cls()
        log._done, log.count = events, len(events)
        return log

    def events(self) -> list[tuple[str, str, float, float, dict[str, Any]]]:
        for render in self._pending:
            render(self._done)
        self._pending.clear()
        self.count = len(self._done)
        return self._done


@dataclass
class StepSetup:
    """What a step's timing starts from, the same in both engines."""

    times: list[LayerTimes]
    head_s: float
    start: float  # the step's start (the previous step's end)
    h0: float  # when the host starts issuing its layers
    flush: float  # the host's store of its write-through rows, after its last layer
    moves: bool  # any layer gathers or copies
    sel_end: float  # when the GPU has run the step's selection (device gather), else start


class EngineBase:
    """What both engines share: memory levels, the trace, the host's position across
    steps, a step that moves nothing (closed form), the records and the result."""

    def __init__(self, policy: Policy, max_layer_events: int = 250_000, coster: StepCoster | None = None) -> None:
        self.policy = policy
        # what times the plans: the policy's own coster, or another profile's for the same
        # plans (``simulate(..., timing=)``)
        self.coster = coster or policy.coster
        lay = policy.layout
        self.gpu_capacity, self.cpu_capacity = lay.gpu_capacity_bytes, lay.cpu_capacity_bytes
        self.gpu_level = self.cpu_level = 0.0
        self.max_layer_events = max_layer_events
        self.log = EventLog()
        self.memory_log: list[tuple[float, float, float]] = []
        self.records: list[StepRecord] = []
        self.oom: OutOfMemory | None = None
        self._host_free = 0.0  # when the host has issued everything so far
        self._trace_cut: int | None = None
        self._peak_gpu = 0.0
        self._peak_cpu = 0.0
        self._sim_events = 0
        # a spilling step whose host does not wait for it (the device gather) still runs
        # the selection first on the GPU; its fetches need the selection's row ids
        self._device_gather = bool(getattr(self.coster, "device_gather", False))
        self._inline = bool(getattr(self.coster, "inline_fetch", False))

    @property
    def now(self) -> float:
        raise NotImplementedError

    # -- memory -------------------------------------------------------------------
    def _apply_memory(self, plan: StepPlan) -> OutOfMemory | None:
        lay, c = self.policy.layout, self.coster
        per_layer_seq = plan.batch * self.policy.model.num_layers
        gpu = (
            plan.gpu_bytes
            if plan.gpu_bytes is not None
            else (lay.gpu_static_bytes + per_layer_seq * plan.gpu_kv_tokens * c.kv_bytes + plan.gpu_extra_bytes)
        )
        cpu = (
            plan.cpu_bytes
            if plan.cpu_bytes is not None
            else (
                lay.cpu_static_bytes
                + per_layer_seq * (plan.cpu_kv_tokens * c.kv_bytes + plan.cpu_hidden_tokens * c.hidden_bytes)
            )
        )
        if gpu > self.gpu_capacity:
            return OutOfMemory(
                "gpu",
                f"step {plan.step} needs {gpu / 1e9:.2f} GB of GPU memory; capacity {self.gpu_capacity / 1e9:.2f} GB",
                plan.step,
            )
        if cpu > self.cpu_capacity:
            return OutOfMemory(
                "cpu",
                f"step {plan.step} needs {cpu / 1e9:.2f} GB of host memory; capacity {self.cpu_capacity / 1e9:.2f} GB",
                plan.step,
            )
        self.gpu_level, self.cpu_level = gpu, cpu
        self._peak_gpu = max(self._peak_gpu, gpu)
        self._peak_cpu = max(self._peak_cpu, cpu)
        self.memory_log.append((self.now, gpu, cpu))
        return None

    # -- trace ---------------------------------------------------------------------
    def _trace(self, lane: str, name: str, start: float, dur: float, args: dict[str, Any] | None = None) -> None:
        if dur > 0 and self._trace_cut is None:
            self.log.add((lane, name, start, dur, args or {}))

    # -- one step --------------------------------------------------------------------
    def _host_start(self, plan: StepPlan) -> float:
        """When the host starts issuing this step's layers. It runs ahead of the GPU (launches
        queue) unless the step needs a GPU result on the host first (``host_round_trip``):
        then it waits for the previous step to finish, which is now, and for the selection
        that the GPU runs next (a spilling run's selection graph and its copy down)."""
        if plan.phase == "prefill":
            return max(self._host_free, self.now)
        step_s = self.coster.step_host_s()
        ready = self._host_free + step_s
        self._trace("Host", "step", self._host_free, step_s, {"step": plan.step})
        if not plan.host_round_trip:
            return ready
        # the selection graph runs once the GPU is free and the host has issued it (after
        # the last step's flush and the step's own bookkeeping, which overlap the GPU's
        # tail); the host then waits for its host part and sets up the gathers
        sel, start = self.coster.selection_s(True), max(self.now, ready)
        self._trace("GPU compute", "select", start, sel, {"step": plan.step})
        rt = self.coster.round_trip_host_s()
        self._trace("Host", "round trip", start + sel, rt, {"step": plan.step})
        return start + sel + rt

    def _host_done(self, issued_s: float, flush_s: float, step: int) -> None:
        """The host has issued a step's last layer at ``issued_s``; it then flushes the
        step's write-through rows and is free for the next step."""
        self._host_free = issued_s + flush_s
        self._trace("Host", "flush", issued_s, flush_s, {"step": step})

    def _setup(self, plan: StepPlan) -> StepSetup:
        times: list[LayerTimes] = [self.coster.layer_times(lp) for lp in plan.layers]
        head_s = self.coster.lm_head_s(plan.batch)  # logits for the last position of each sequence
        if self._trace_cut is None and self.log.count + 5 * len(times) > self.max_layer_events:
            self._trace_cut = plan.step
        start = self.now
        h0 = self._host_start(plan)
        flush = self.coster.flush_s(times, plan.phase == "prefill")  # the host stores the write-through rows
        moves = any(t.gather_s or t.h2d_s or t.d2h_s for t in times)
        sel_s = (
            self.coster.selection_s(True)
            if self._device_gather and plan.phase != "prefill" and not plan.host_round_trip
            else 0.0
        )
        sel_end = max(start, h0) + sel_s if sel_s else start  # issued as the host starts the step
        if sel_s:
            self._trace("GPU compute", "select", sel_end - sel_s, sel_s, {"step": plan.step})
        return StepSetup(times, head_s, start, h0, flush, moves, sel_end)

    def _still_step(self, plan: StepPlan, st: StepSetup) -> float:
        """A step whose layers move nothing: one GPU interval. Layer l starts once the GPU is
        free and the host has begun issuing it, and cannot end before the host has issued
        all of it. Returns the step's end."""
        g, h = st.sel_end, st.h0
        spans = []
        for t in st.times:
            s = max(g, h)
            h += t.host_s
            g = max(s + t.compute_s, h)
            spans.append((s, g, h - t.host_s, t.host_s))
        g = max(g, h) + st.head_s
        self._host_done(h, st.flush, plan.step)
        self._sim_events += 1
        if self._trace_cut is None:
            for l, (s, e, hs, hd) in enumerate(spans):
                self._trace("GPU compute", f"L{l}", s, e - s, {"step": plan.step})
                self._trace("Host", f"issue L{l}", hs, hd, {"step": plan.step})
            self._trace("GPU compute", "lm_head", g - st.head_s, st.head_s, {"step": plan.step})
        return g

    def _record(self, plan: StepPlan, start: float, times: list[LayerTimes]) -> None:
        b = plan.batch
        self.records.append(
            StepRecord(
                step=plan.step,
                phase=plan.phase,
                start_s=start,
                end_s=self.now,
                context_len=plan.context_len,
                attended_tokens=plan.attended_tokens,
                h2d_bytes=sum(t.h2d_bytes for t in times),
                d2h_bytes=sum(t.d2h_bytes for t in times),
                recomputed_tokens=b * sum(lp.recompute_tokens for lp in plan.layers),
                recompute_ratio=plan.recompute_ratio,
                gpu_bytes=self.gpu_level,
                cpu_bytes=self.cpu_level,
                tokens_out=plan.generated,
                batch=plan.batch,
            )
        )

    def _result(self, total_s: float, wall_s: float) -> EngineResult:
        return EngineResult(
            steps=self.records,
            log=self.log,
            memory_log=self.memory_log,
            oom=self.oom,
            peak_gpu_bytes=self._peak_gpu,
            peak_cpu_bytes=self._peak_cpu,
            total_time_s=total_s,
            sim_events=self._sim_events,
            sim_wall_s=wall_s,
            trace_truncated_at_step=self._trace_cut,
            policy_summary=self.policy.summary(),
        )


class Engine(EngineBase):
    """The full event model: each resource of a step is a SimPy process (``--exact``)."""

    def __init__(self, policy: Policy, max_layer_events: int = 250_000, coster: StepCoster | None = None) -> None:
        super().__init__(policy, max_layer_events, coster)
        self.env = simpy.Environment()
        self._d2h_tail: simpy.Process | None = None

    @property
    def now(self) -> float:
        return float(self.env.now)

    def _run_step(self, plan: StepPlan, st: StepSetup):
        env = self.env
        times, head_s, h0, flush, sel_end = st.times, st.head_s, st.h0, st.flush, st.sel_end
        if not st.moves:
            end = self._still_step(plan, st)
            yield env.timeout(end - st.start)
            return
        L = len(times)
        gathered = [env.event() for _ in range(L)]
        loaded = [env.event() for _ in range(L)]
        computed = [env.event() for _ in range(L)]
        issue_end = [0.0] * L  # when the host has issued all of layer l
        issuing = [env.event() for _ in range(L)]

        def cpu_proc():
            if plan.host_round_trip and h0 > env.now:
                yield env.timeout(h0 - env.now)  # the gather job is submitted after the round trip
            for l, t in enumerate(times):
                if t.gather_s > 0 and l >= STAGING_DEPTH and staged[l]:
                    yield loaded[l - STAGING_DEPTH]  # its pinned buffer's last copy is out
                if t.gather_s > 0:
                    s = env.now
                    yield env.timeout(t.gather_s)
                    self._trace("CPU", f"gather L{l}", s, t.gather_s, {"step": plan.step})
                gathered[l].succeed()

        def host_proc():
            h = h0
            for l, t in enumerate(times):
                if t.gather_s > 0 or t.h2d_s > 0:
                    yield gathered[l]  # the main thread waits for the worker's rows
                    h = max(h, env.now)
                if h > env.now:
                    yield env.timeout(h - env.now)
                issuing[l].succeed()
                self._trace("Host", f"issue L{l}", h, t.host_s, {"step": plan.step})
                h += t.host_s
                issue_end[l] = h
            self._host_done(h, flush, plan.step)

        lags = [max(lp.fetch_lag, int(lp.sync_fetch)) for lp in plan.layers]
        staged = [not lp.contiguous_fetch for lp in plan.layers]  # token gathers go through staging

        def h2d_proc():
            if sel_end > env.now:
                yield env.timeout(sel_end - env.now)
            for l, t in enumerate(times):
                yield gathered[l]
                if lags[l] and l >= lags[l]:
                    yield computed[l - lags[l]]  # no prefetch, or one layer's (Accelerate's hooks, FlexGen)
                if t.h2d_s > 0 and l >= STAGING_DEPTH and staged[l]:
                    yield computed[l - STAGING_DEPTH]  # its GPU buffer's last rows are consumed
                if t.h2d_s > 0:
                    s = env.now
                    yield env.timeout(t.h2d_s)
                    self._trace("H2D", f"L{l}", s, t.h2d_s, {"step": plan.step, "bytes": t.h2d_bytes})
                loaded[l].succeed()

        def d2h_proc(prev: simpy.Event | None):
            if prev is not None:
                yield prev
            for l, t in enumerate(times):
                yield computed[l]
                if t.d2h_s > 0:
                    s = env.now
                    yield env.timeout(t.d2h_s)
                    self._trace("D2H", f"L{l}", s, t.d2h_s, {"step": plan.step, "bytes": t.d2h_bytes})

        def host_inline_proc():
            # the real backend's inline fetch: the issuing thread gathers layer 0's rows,
            # then after issuing layer l gathers up to layer l + 2 (each waiting for the copy
            # that last used its pinned buffer); a layer's GPU work ends no earlier than
            # its own issue, not its successors' gathers
            if h0 > env.now:
                yield env.timeout(h0 - env.now)
            nxt = 0

            def gather(j: int):
                t = times[j]
                if t.gather_s > 0 and j >= STAGING_DEPTH and staged[j]:
                    yield loaded[j - STAGING_DEPTH]
                if t.gather_s > 0:
                    s = env.now
                    yield env.timeout(t.gather_s)
                    self._trace("CPU", f"gather L{j}", s, t.gather_s, {"step": plan.step})
                gathered[j].succeed()

            if times[0].gather_s > 0 or times[0].h2d_s > 0:
                yield from gather(0)
                nxt = 1
            for l, t in enumerate(times):
                while nxt <= l:  # a layer not fetched ahead: its own rows first
                    yield from gather(nxt)
                    nxt += 1
                issue_end[l] = env.now + t.host_s
                issuing[l].succeed()
                self._trace("Host", f"issue L{l}", env.now, t.host_s, {"step": plan.step})
                yield env.timeout(t.host_s)
                while nxt <= min(l + STAGING_DEPTH, L - 1):
                    yield from gather(nxt)
                    nxt += 1
                if l >= RUN_AHEAD_LAYERS:
                    # the executor's throttle: the GPU has finished layer l - k before the
                    # thread goes on (to issue, and to gather further ahead)
                    yield computed[l - RUN_AHEAD_LAYERS]
            # set before the step ends (the GPU's last layer and head end after this)
            self._host_done(env.now, flush, plan.step)

        env.process(h2d_proc())
        if self._inline:
            env.process(host_inline_proc())
        else:
            env.process(cpu_proc())
            env.process(host_proc())
        if any(t.d2h_s for t in times):
            self._d2h_tail = env.process(d2h_proc(self._d2h_tail))
        if sel_end > env.now:
            yield env.timeout(sel_end - env.now)
        for l, t in enumerate(times):
            yield loaded[l]
            yield issuing[l]
            s = env.now
            end = max(s + t.compute_s, issue_end[l])
            yield env.timeout(end - s)
            self._trace("GPU compute", f"L{l}", s, end - s, {"step": plan.step})
            computed[l].succeed()
        s = env.now
        yield env.timeout(head_s)
        self._trace("GPU compute", "lm_head", s, head_s, {"step": plan.step})
        self._sim_events += 9 * L

    def _main(self):
        oom = self.policy.static_check()
        if oom:
            self.oom = oom
            return
        for plan in self.policy.plans():
            if isinstance(plan, OutOfMemory):
                self.oom = plan
                return
            oom = self._apply_memory(plan)
            if oom:
                self.oom = oom
                return
            st = self._setup(plan)
            yield from self._run_step(plan, st)
            self._record(plan, st.start, st.times)
        if self._d2h_tail is not None:
            yield self._d2h_tail  # the run ends when the last write-back lands

    def run(self) -> EngineResult:
        wall0 = time.perf_counter()
        self.env.process(self._main())
        self.env.run()
        return self._result(float(self.env.now), time.perf_counter() - wall0)
