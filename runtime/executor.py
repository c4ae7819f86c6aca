"""The real backend: the scheduler's StepPlans run on a GPU with real tensors.

One scheduler, two executors: the same policy object that feeds the SimPy engine yields
the plans here (all of them before the run starts: they depend on the scenario and the
profile only). The host issues at most ``run_ahead_layers`` layers ahead of the GPU.
Per step this executor

* dense-gpu, ALISA: selects and places the new token and the step's misses in the GPU
  cache (``SlotCache``; a spilling step's selection is one CUDA graph,
  ``SpillSelector``), gathers the misses' rows on the host into pinned staging and copies
  them on the H2D stream, layer by layer, while the GPU computes earlier layers; lands
  fetched KV in its slots and recomputes the rest from their layer inputs x (Phase III);
  attends with the Triton sparse kernel and updates SWA's importance with the Triton
  importance kernel; writes the new token's KV (and x) through to the host on the D2H
  stream;
* flexgen: fetches each layer's host-resident KV prefix whole, a layer ahead, and
  attends over GPU and host parts (``PrefixCache``).

Times are CUDA events on the streams (the host clock on the CPU, where tests run it with
TRITON_INTERPRET=1); bytes are the sizes of the copies issued; memory is the allocator's.
The result has the simulator's shape (``EngineResult``), so the same writers and readers
serve both backends.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from alisa.sim.engine import RUN_AHEAD_LAYERS, EngineResult, EventLog, StepRecord
from alisa.sim.errors import InputError
from alisa.sim.hardware import GB
from alisa.sim.plan import OutOfMemory, StepPlan
from alisa.sim.policies import make_policy
from alisa.sim.policies.alisa import AlisaPolicy, swa_budget
from alisa.sim.policies.base import Policy
from alisa.sim.policies.dense_gpu import DenseGpuPolicy
from alisa.sim.policies.flexgen import FlexGenPolicy
from alisa.sim.scenario import FlexGenPolicyConfig, Scenario

from .decode_step import DecodeStep
from .decoder import dense_causal
from .device import Device, Timeline, require_cuda
from .device_fetch import PROGRAMS, DeviceFetcher
from .fetch import HostFetcher, fetch_threads_default
from .prefix_cache import PrefixCache
from .recompute import Recompute
from .slot_cache import SlotCache
from .weights import LoadedModel, load_model

SUPPORTED = ("alisa", "dense-gpu", "flexgen")


@dataclass
class RealOptions:
    selection: Literal["plan", "free"] = "plan"  # plan: the plan's miss counts; free: pure SWA
    weights: Literal["auto", "random", "real"] = "auto"
    device: str | None = None  # None: the CUDA GPU (required); "cpu": tests
    prompt_ids: torch.Tensor | None = None  # [B, P]; default: random ids, or the bundled text
    layer_trace_steps: int = 8  # decode steps whose per-layer spans are traced
    trace_later: int = 4  # ... and this many more, spread over the rest of the run
    act_dtype: Literal["auto", "float16", "float32"] = "auto"  # auto: fp16 on a GPU, fp32 on the CPU
    graphs: bool = True  # decode's dense parts as CUDA graphs (GPU only)
    fetch_threads: int | None = None  # CPU threads that gather fetched rows; None: fetch_threads_default()
    fetch_mode: Literal["inline", "thread"] = "inline"  # who gathers: the main thread between layers, or a worker
    # the host issues at most this many layers past the GPU (None: no cap). A deep queue of
    # graph launches made the GPU slower on the H100 (dense OPT-6.7B b32: 12.2 ms per step
    # uncapped, 9.95 at 2 layers; a layer-events probe, in git history)
    run_ahead_layers: int | None = RUN_AHEAD_LAYERS  # the simulator's engine models the same
    # the device gather's launch (benchmarks/debug/mixed_gather.py); the profile's zero_copy
    # section is calibrated at the defaults: one kernel per layer, DeviceFetcher's PROGRAMS,
    # a copy stream of normal priority. One kernel per part (gather_fused=False) ran
    # Phase III steps that fetch a few KV rows beside many inputs x ~1.9x slower on the H100
    gather_fused: bool = True  # one kernel per layer for KV, scales and x
    gather_programs: int | None = None  # None: device_fetch.PROGRAMS
    copy_stream_priority: int = 0  # -1: the copy stream's kernels are placed first
    # calibration only (``calibration/step_probe.py``): the device gather's kernels are not
    # launched (its events still are), so the same steps' layers run with nothing beside
    # them; the rows attended are stale, so the tokens are meaningless
    gather_dry: bool = False


@dataclass
class RealRun:
    er: EngineResult
    tokens: torch.Tensor  # [B, steps] greedy tokens, prefill's first
    info: dict[str, Any] = field(default_factory=dict)


def check_supported(sc: Scenario, policy: Policy) -> None:
    """Reject, by field, what this executor does not run (before anything is allocated)."""
    name = sc.policy.name
    if name not in SUPPORTED:
        raise InputError(
            f"the real backend runs {', '.join(SUPPORTED)}; '{name}' runs in the simulator only", field="policy.name"
        )
    lay = policy.layout
    if isinstance(policy, FlexGenPolicy):
        bad = []
        if policy.placement.wg < 1.0 - 1e-9:
            bad.append(f"weights_gpu_percent {100 * policy.placement.wg:.1f} (streamed weights; set 100)")
        if policy.ngb > 1:
            bad.append(f"gpu_batch_size {policy.gbs} < batch_size (zig-zag blocks; set it to the batch size)")
        if policy.ccc:
            bad.append("cpu_cache_compute (attention on the CPU; set false)")
        fp = sc.policy
        if isinstance(fp, FlexGenPolicyConfig) and fp.runtime != "alisa":
            bad.append("runtime flexgen (FlexGen's own code; set policy.runtime: alisa to run the placement here)")
        if isinstance(fp, FlexGenPolicyConfig) and (fp.compress_weight or fp.compress_cache or fp.int8_kv):
            bad.append("compression (set compress_weight, compress_cache and int8_kv false)")
        if bad:
            raise InputError(
                "the real backend's FlexGen-like offload runs KV placement only; not: " + "; ".join(bad), field="policy"
            )
        return
    if lay.offloaded_layers:
        raise InputError(
            f"the plan streams the weights of {lay.offloaded_layers} layers from the host, which the "
            "real backend does not run yet; give the GPU room for all weights (a smaller "
            "policy.gpu_kv_budget_gb or batch)",
            field="policy.gpu_kv_budget_gb",
        )
    if isinstance(policy, AlisaPolicy) and policy.spills and policy.a_max > policy.C:
        raise InputError(
            f"the GPU cache holds {policy.C} tokens per sequence and layer, fewer than the "
            f"{policy.a_max} a step attends; the real backend needs them all resident at once "
            "(raise policy.gpu_kv_budget_gb/_tokens or kv_sparsity)",
            field="policy.gpu_kv_budget_gb",
        )


class RealExecutor:
    def __init__(self, sc: Scenario, opts: RealOptions | None = None) -> None:
        self.sc = sc
        self.opts = opts or RealOptions()
        dev = torch.device("cpu") if self.opts.device == "cpu" else require_cuda()
        self.policy = make_policy(sc)
        check_supported(sc, self.policy)
        self.d = Device(dev, h2d_priority=self.opts.copy_stream_priority)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        auto = torch.float16 if dev.type == "cuda" else torch.float32
        self.act_dtype = auto if self.opts.act_dtype == "auto" else getattr(torch, self.opts.act_dtype)
        m = sc.model
        self.m = m
        self.B = sc.workload.batch_size
        self.P = sc.workload.prompt_len
        self.N = self.P + sc.workload.gen_len
        if m.max_positions < self.N and m.family == "opt":
            raise InputError(
                f"prompt + generation ({self.N}) exceeds {m.name}'s {m.max_positions} learned positions",
                field="workload",
            )
        try:
            self.model: LoadedModel = load_model(m, dev, self.act_dtype, sc.seed, self.opts.weights)
        except torch.OutOfMemoryError:
            raise InputError(f"out of GPU memory loading {m.name}'s weights", field="model") from None
        self.d.allocated["weights"] = sum(
            t.numel() * t.element_size() for t in {id(t): t for t in self.model.decoder.w.values()}.values()
        )
        self.dec = self.model.decoder
        self.positions = torch.arange(self.N, device=dev)
        self._build_cache()
        self.step_fn = DecodeStep(self.dec, self.B, self.act_dtype, dev, graphs=self.opts.graphs)
        k = self.opts.run_ahead_layers
        self.ahead_evt = [torch.cuda.Event() for _ in range(k)] if k and dev.type == "cuda" else []
        self.issued_layers = 0
        self._hook_cache()

    def _hook_cache(self) -> None:
        """The cache's graph-safe parts run inside the step's graphs (``DecodeStep``)."""
        st, scale = self.step_fn, self.dec.scale
        if self.slots is not None:
            c = self.slots
            st.pre_hook = lambda l: c.place_new(l, st.rows[l], st.x)
            st.attend_hook = lambda l: c.attend(l, st.q[l], scale, st.o)
        else:
            pc = self.prefix
            assert pc is not None  # one of the two caches is built
            st.pre_hook = lambda l: pc.attend_gpu_part(l, st.q[l], st.rows[l], scale, st.o)
            st.attend_hook = lambda l: pc.attend_host_part(l, st.q[l], scale, st.o)

    # -- setup -----------------------------------------------------------------------------------
    def _build_cache(self) -> None:
        p, m, d = self.policy, self.m, self.d
        self.prefix: PrefixCache | None = None
        self.slots: SlotCache | None = None
        self.fetcher: HostFetcher | None = None
        self.dfetch: DeviceFetcher | None = None
        self.recompute: Recompute | None = None
        if isinstance(p, FlexGenPolicy):
            cpu = [p._cpu_tokens(n) for n in range(self.P, self.N + 1)]
            gpu_tokens = max(n - c for n, c in zip(range(self.P, self.N + 1), cpu, strict=True)) + 1
            self.prefix = PrefixCache(
                d,
                layers=m.num_layers,
                batch=self.B,
                max_tokens=self.N,
                gpu_tokens=gpu_tokens,
                cpu_max=max(cpu),
                kv_heads=m.num_kv_heads,
                head_dim=m.head_dim,
            )
            self.swa = False
            return
        if isinstance(p, AlisaPolicy):
            cfg = p.cfg
            self.swa = cfg.kv_sparsity > 0
            self.s, self.lf = cfg.kv_sparsity, cfg.local_fraction
            C = min(p.C, self.N)
            spills = p.spills
            self.slots = SlotCache(
                d,
                layers=m.num_layers,
                batch=self.B,
                max_tokens=self.N,
                capacity=C if spills else self.N,
                kv_heads=m.num_kv_heads,
                head_dim=m.head_dim,
                hidden=m.hidden_size,
                int8=cfg.int8_kv,
                write_through=spills,
                keep_inputs=cfg.recompute,
                swa=self.swa,
                history=p.importance_history(),
                ring_tokens=max(self.P, p.a_max),
                max_fetch=p.a_max,
                act_dtype=self.act_dtype,
                attend_max=p.a_max,
                selection=self.opts.selection,
                global_max=p.global_max(),
            )
        else:
            assert isinstance(p, DenseGpuPolicy)
            self.swa = False
            self.s, self.lf = 0.0, 1.0
            self.slots = SlotCache(
                d,
                layers=m.num_layers,
                batch=self.B,
                max_tokens=self.N,
                capacity=self.N,
                kv_heads=m.num_kv_heads,
                head_dim=m.head_dim,
                hidden=m.hidden_size,
                int8=self.sc.policy.int8_kv,
                write_through=False,
                keep_inputs=False,
                swa=False,
                history=1,
                ring_tokens=1,
                max_fetch=0,
                act_dtype=self.act_dtype,
                attend_max=self.N,
            )
        # a spilling ALISA run's fetch: the host gathers (``fetch.py``) or the GPU does (``device_fetch.py``)
        device_gather = isinstance(p, AlisaPolicy) and p.cfg.gather == "device"
        self.dfetch = (
            DeviceFetcher(
                self.slots,
                self.opts.graphs,
                fused=self.opts.gather_fused,
                programs=self.opts.gather_programs or PROGRAMS,
                dry=self.opts.gather_dry,
            )
            if self.slots.write_through and device_gather
            else None
        )
        self.fetcher = (
            HostFetcher(d, m.num_layers, self.opts.fetch_threads, self.opts.fetch_mode)
            if self.slots.write_through and not device_gather
            else None
        )
        sel = self.slots.selector
        self.recompute = (
            Recompute(self.slots, self.dec.kv_from_input, sel.rec_width, sel.dst_x, sel.pos_x)
            if self.slots.keep_inputs and sel is not None
            else None
        )

    def prompt(self) -> torch.Tensor:
        if self.opts.prompt_ids is not None:
            ids = self.opts.prompt_ids
            if tuple(ids.shape) != (self.B, self.P):
                raise InputError(
                    f"prompt ids of shape {tuple(ids.shape)}; the scenario needs ({self.B}, {self.P})", field="workload"
                )
            return ids.to(self.d.dev)
        if self.model.tokenizer is not None:
            from alisa.accuracy.text import read_text, token_ids

            text, label = read_text(None)
            ids = token_ids(text, self.model.tokenizer, self.m.vocab_size, self.P * self.B, label)
            return ids.view(self.B, self.P).to(self.d.dev)  # B consecutive passages of the text
        g = torch.Generator().manual_seed(self.sc.seed)
        return torch.randint(0, self.m.vocab_size, (self.B, self.P), generator=g).to(self.d.dev)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> RealRun:
        switch = sys.getswitchinterval()
        # the main thread and the host-fetch worker trade the GIL between torch calls;
        # the default 5 ms hand-over would stall whichever is waiting
        sys.setswitchinterval(1e-4)
        threads = torch.get_num_threads()
        if self.fetcher is not None and self.fetcher.thread is None:
            torch.set_num_threads(self.fetcher.threads)  # the main thread gathers (inline fetch)
        elif self.dfetch is not None:
            # the host still stores the write-through rows; with all 16 of the lent VM's
            # vCPUs in the copy a b32 step's store took 10-20 ms, not ~1 (the threads
            # wait for the slowest vCPU): the host gather's thread count
            torch.set_num_threads(self.opts.fetch_threads or fetch_threads_default())
        try:
            with torch.no_grad():
                plans, oom = self._schedule()
                self._warm_up(plans)
                self._rehearse()
                return self._run(plans, oom)
        except torch.OutOfMemoryError:
            held = torch.cuda.memory_allocated(self.d.dev) / GB if self.d.cuda else 0.0
            raise InputError(
                f"out of GPU memory during the run (activations and temporaries beyond the "
                f"pools; {held:.2f} GB held by: "
                + ", ".join(f"{k} {v / GB:.2f} GB" for k, v in self.d.allocated.items() if not k.startswith("host"))
                + ")",
                field="workload.batch_size",
            ) from None
        finally:
            sys.setswitchinterval(switch)
            torch.set_num_threads(threads)
            if self.fetcher is not None:
                self.fetcher.close()

    def _warm_up(self, plans: list[StepPlan] | None = None) -> None:
        """Capture the step's graphs (their warm-up runs compile the Triton kernels, which
        see fixed buffer widths: one variant per run) before anything is timed; with
        ``plans``, the recompute's too, at every width bucket they can need."""
        self.step_fn.capture()
        if self.opts.graphs and self.slots is not None and self.slots.selector is not None:
            self.slots.selector.capture()
        if self.dfetch is not None:
            self.dfetch.capture()
        if self.opts.graphs and self.recompute is not None and plans:
            assert self.slots is not None and self.slots.selector is not None  # recompute spills from slots
            K = self.slots.selector.K
            rows = max(
                (
                    K if self.opts.selection == "free" and p.recompute_ratio > 0 else lp.recompute_tokens
                    for p in plans
                    for lp in p.layers
                ),
                default=0,
            )
            self.recompute.capture(rows)
        self.d.sync()

    def _rehearse(self, steps: int = 2) -> None:
        """Prefill and a few steps of the run, untimed, on a throwaway copy of the policy,
        then forget them: first calls load CUDA modules and pick cuBLAS kernels, which a
        steady-state model does not describe."""
        import itertools

        policy, self.policy = self.policy, make_policy(self.sc)
        self.traced: set[int] = set()
        self.tl = Timeline(self.d)
        self._reset_run_state()
        ids = self.prompt()
        last: torch.Tensor | None = None
        try:
            for plan in itertools.islice(self.policy.plans(), steps + 1):
                if isinstance(plan, OutOfMemory):
                    break
                if plan.phase == "prefill":
                    last, *_ = self._prefill(plan, ids)
                else:
                    assert last is not None  # the prefill comes first
                    last, *_ = self._decode(plan, last)
            self._flush_pending()
            self.d.sync()
        finally:
            self.policy = policy
            if self.slots is not None:
                self.slots.reset()
            elif self.prefix is not None:
                self.prefix.reset()

    def _reset_run_state(self) -> None:
        self.spans: list[tuple[str, str, Any, Any, dict[str, Any]]] = []  # lane, name, start mark, end mark, args
        self.host_spans: list[tuple[str, str, float, float, dict[str, Any]]] = []
        self.free_misses: list[float] = []
        self.planned_misses: list[float] = []
        self.last_d2h: Any = None
        self.pending_flush: Any = None
        self.cpu_prev = 0

    def _run(self, plans: list[StepPlan], oom: OutOfMemory | None) -> RealRun:
        d = self.d
        ids = self.prompt()
        self.traced = self._traced_steps(sum(p.phase != "prefill" for p in plans))
        self.tl = Timeline(d)
        wall0 = time.perf_counter()
        self._reset_run_state()
        step_marks: list[tuple[StepPlan, Any, int, int, int, int, int]] = []
        tokens: list[torch.Tensor] = []
        start = self.tl.mark(d.compute)
        for plan in plans:
            if plan.phase == "prefill":
                tok, h2d, d2h, rec = self._prefill(plan, ids)
            else:
                tok, h2d, d2h, rec = self._decode(plan, tokens[-1])
            tokens.append(tok)
            step_marks.append((plan, self.tl.mark(d.compute), h2d, d2h, rec, d.gpu_bytes_now(), self._host_bytes()))
        self._flush_pending()
        d.sync()
        wall = time.perf_counter() - wall0
        return self._result(start, step_marks, tokens, oom, wall)

    def _schedule(self) -> tuple[list[StepPlan], OutOfMemory | None]:
        """The run's plans, made before it starts (they depend on the scenario and the
        profile only, not on measurements). The scheduler is Python (0.2-1 ms a step for
        these models, `plan_s` in the result's info), which the simulator does not time;
        made inline it would stall every step's host issue."""
        t0 = time.perf_counter()
        oom = self.policy.static_check()
        plans: list[StepPlan] = []
        if oom is None:
            for plan in self.policy.plans():
                if isinstance(plan, OutOfMemory):
                    oom = plan
                    break
                plans.append(plan)
        self.plan_s = time.perf_counter() - t0
        return plans, oom

    def _traced_steps(self, steps: int) -> set[int]:
        """The decode steps whose per-layer spans go into the trace: the first few, and a
        few more at even spacing up to the last (how the late, larger steps run)."""
        first = min(self.opts.layer_trace_steps, steps)
        later = (
            {first + (steps - 1 - first) * (i + 1) // self.opts.trace_later for i in range(self.opts.trace_later)}
            if steps > first and self.opts.trace_later > 0
            else set()
        )
        return set(range(first)) | later

    def _host_bytes(self) -> int:
        cache = self.slots or self.prefix
        assert cache is not None
        return cache.host_bytes_in_use()

    # -- prefill ---------------------------------------------------------------------------------
    def _prefill(self, plan: StepPlan, ids: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
        dec, d = self.dec, self.d
        pos = self.positions[: self.P]
        x = dec.embed(ids, pos)
        d2h = 0
        cpu_n = plan.cpu_kv_tokens if self.prefix else 0
        for l in range(self.m.num_layers):
            s = self.tl.mark(d.compute)
            x_in = x
            _, q, k, v = dec.qkv(l, x, pos)
            a = dense_causal(q, k, v, dec.scale)
            if self.slots:
                d2h += self.slots.prefill_layer(l, k, v, x_in)
                if self.swa:
                    self.slots.init_importance(l, q, k, dec.scale)
            else:
                assert self.prefix is not None
                d2h += self.prefix.prefill_layer(l, k, v, cpu_n)
            x = dec.finish_layer(l, x, a)
            self.spans.append(("GPU compute", f"prefill L{l}", s, self.tl.mark(d.compute), {"step": -1}))
        if self.slots:
            self.slots.after_prefill(self.P)
        else:
            assert self.prefix is not None
            self.prefix.cpu_n = self.cpu_prev = cpu_n
        self.last_d2h = self.tl.mark(d.d2h) if d.cuda else None
        return dec.logits(x[:, -1]).argmax(-1), 0, d2h, 0

    # -- decode ----------------------------------------------------------------------------------
    def _decode(self, plan: StepPlan, last: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
        if self.prefix is not None:
            return self._decode_prefix(plan, last)
        if self.dfetch is not None:
            return self._decode_device_gather(plan, last)
        d, c = self.d, self.slots
        assert c is not None
        t_sel = time.perf_counter()
        sel, n, w, misses, _, trace = self._select(plan)
        pos = n - 1
        st = self.step_fn
        # issued while the GPU may still run the previous step; only the selection's host
        # part is waited for (``resolve``), so layer 0's first graph is already queued
        if d.cuda and c.write_through:
            d.compute.wait_stream(d.d2h)  # last step's write-through has read the static rows
        st.begin(last, pos)
        s0 = self.tl.mark(d.compute) if trace else None
        st.pre(0)
        t_wait = time.perf_counter()
        c.resolve(sel)
        t_ready = time.perf_counter()
        fetching = sel.spills and sel.widths is not None and int(sel.widths.sum()) > 0
        if sel.spills:
            self.free_misses.append(sel.free_misses)
            self.planned_misses.append(sum(misses) / len(misses))
        fetcher = self.fetcher
        if fetching:
            assert fetcher is not None  # built for every run whose KV spills
            fetcher.submit(c.gather_job(sel, fetcher, self.tl.mark if trace else None), after=self.last_d2h)
            self.last_d2h = None  # later steps' host rows are stored by the worker, in order
        if trace:
            self.host_spans.append(("Host", "select", t_sel, t_wait, {"step": plan.step}))
            self.host_spans.append(("Host", "wait selection", t_wait, t_ready, {"step": plan.step}))
        h2d = d2h = recomputed = 0
        for l in range(self.m.num_layers):
            t_l = time.perf_counter()
            s = s0 if l == 0 else (self.tl.mark(d.compute) if trace else None)
            if l:
                st.pre(l)
            if fetching:
                # traced: the compute stream's wait for the layer's copy, apart from its own work
                w0 = self.tl.mark(d.compute) if trace else None
                assert fetcher is not None
                f = fetcher.wait(l)  # inline: runs layer 0's job; later layers' ran below
                if trace:
                    self.spans.append(
                        ("GPU compute", f"wait copy L{l}", w0, self.tl.mark(d.compute), {"step": plan.step})
                    )
                if self.recompute is not None:
                    self.recompute.run(l, f.widths[1])
                h2d += f.h2d_bytes
                if trace and f.gather_s is not None:
                    self.host_spans.append(("CPU", f"gather L{l}", f.gather_s[0], f.gather_s[1], {"step": plan.step}))
                    if f.host_marks is not None:
                        tj, g0, g1, c0, c1 = f.host_marks  # job start, gather, copy issue
                        self.host_spans.append(("CPU", f"before gather L{l}", tj, g0, {"step": plan.step}))
                        self.host_spans.append(("CPU", f"before copy L{l}", g1, c0, {"step": plan.step}))
                        self.host_spans.append(("CPU", f"copy issue L{l}", c0, c1, {"step": plan.step}))
                    if f.copy_marks is not None:
                        c0m, c1m = f.copy_marks
                        self.spans.append(("H2D", f"L{l}", c0m, c1m, {"step": plan.step, "bytes": f.h2d_bytes}))
            st.post(l)  # lands the fetched rows, then attends
            if fetching:
                assert fetcher is not None
                fetcher.consumed(l)
            if trace:
                self.host_spans.append(("Host", f"issue L{l}", t_l, time.perf_counter(), {"step": plan.step}))
            if fetching:
                t_f = time.perf_counter()
                assert fetcher is not None
                fetcher.run_to(l + 2)  # inline: gather two layers ahead while the GPU works
                if trace and fetcher.thread is None:
                    self.host_spans.append(("Host", f"fetch ahead L{l}", t_f, time.perf_counter(), {"step": plan.step}))
            if trace:
                self.spans.append(("GPU compute", f"L{l}", s, self.tl.mark(d.compute), {"step": plan.step}))
            self._throttle(l, plan.step if trace else None)
        recomputed = sel.recomputed
        t_end = time.perf_counter()
        tok = st.end()
        if c.write_through:
            d2h, flush = c.write_through_step(pos, plan.step % 2, self.tl.mark)
            if fetcher is not None and fetcher.thread is not None:
                fetcher.run_later(flush)
                if fetcher.error is not None:
                    raise fetcher.error
            else:
                self._store_later(flush, w)
        c.host_tokens_written = n if c.write_through else 0
        if trace:
            self.host_spans.append(("Host", "end", t_end, time.perf_counter(), {"step": plan.step}))
        return tok, h2d, d2h, recomputed

    def _select(self, plan: StepPlan) -> tuple[Any, int, int, list[int], list[int], bool]:
        """The step's SWA budget and its plan's misses per layer, then its selection and
        placement (traced: the selection's GPU span). Returns (selection, context n,
        window w, misses, recomputes, traced)."""
        d, c = self.d, self.slots
        assert c is not None  # ALISA's and dense-gpu's cache
        n = plan.context_len
        a, w = (n, n) if not self.swa else swa_budget(n, self.s, self.lf)
        a = min(a, plan.attended_tokens) if plan.attended_tokens else a
        misses = [lp.h2d_kv_tokens + lp.recompute_tokens for lp in plan.layers]
        recs = [lp.recompute_tokens for lp in plan.layers]
        trace = plan.step in self.traced
        g_sel = self.tl.mark(d.compute) if trace else None
        sel = c.select(
            n, a, w, misses, recs, plan.recompute_ratio, self.opts.selection, stamp=plan.step + 1, t=self.P + plan.step
        )
        if trace:
            # the selection's GPU time (with its host part's copy), from when the GPU reaches it
            self.spans.append(("GPU compute", "select", g_sel, self.tl.mark(d.compute), {"step": plan.step}))
        return sel, n, w, misses, recs, trace

    def _decode_device_gather(self, plan: StepPlan, last: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
        """A spilling ALISA step whose fetched rows the GPU gathers from the host copy
        (``DeviceFetcher``): the host issues the selection, then each layer and, two layers
        ahead, its gather, without waiting for the selection (``plan`` mode: the plan gives
        the recompute widths; ``free`` mode reads them from the selection first)."""
        d, c, fx = self.d, self.slots, self.dfetch
        assert c is not None and fx is not None
        t_sel = time.perf_counter()
        sel, n, w, misses, recs, trace = self._select(plan)
        pos = n - 1
        mark = self.tl.mark if trace else None
        free = self.opts.selection == "free"
        if free:
            c.resolve(sel)  # the recompute's widths come from the selection
            rec_rows = sel.widths[:, 1].tolist()
            fetching = int(sel.widths.sum()) > 0
        else:
            rec_rows = recs
            fetching = any(misses)
        st = self.step_fn
        if d.cuda:
            d.compute.wait_stream(d.d2h)  # last step's write-through has read the static rows
        if fetching:
            fx.start_step(after=self.last_d2h)
            self.last_d2h = None
            copies = {l: fx.issue(l, mark) for l in range(min(2, self.m.num_layers))}
        st.begin(last, pos)
        if trace:
            self.host_spans.append(("Host", "select", t_sel, time.perf_counter(), {"step": plan.step}))
        for l in range(self.m.num_layers):
            t_l = time.perf_counter()
            s = self.tl.mark(d.compute) if trace else None
            st.pre(l)
            if fetching:
                w0 = self.tl.mark(d.compute) if trace else None
                fx.wait(l)
                if trace:
                    self.spans.append(
                        ("GPU compute", f"wait copy L{l}", w0, self.tl.mark(d.compute), {"step": plan.step})
                    )
                if self.recompute is not None:
                    self.recompute.run(l, rec_rows[l])
            st.post(l)  # lands the fetched rows, then attends
            if fetching:
                fx.consumed(l)
                copies[l + 2] = fx.issue(l + 2, mark)
            if trace:
                self.host_spans.append(("Host", f"issue L{l}", t_l, time.perf_counter(), {"step": plan.step}))
                self.spans.append(("GPU compute", f"L{l}", s, self.tl.mark(d.compute), {"step": plan.step}))
            self._throttle(l, plan.step if trace else None)
        t_end = time.perf_counter()
        tok = st.end()
        d2h, flush = c.write_through_step(pos, plan.step % 2, self.tl.mark)
        self._store_later(flush, w)
        c.host_tokens_written = n
        # what moved: the selection's counts (its host part arrived long before this point)
        c.resolve(sel)
        self.free_misses.append(sel.free_misses)
        self.planned_misses.append(sum(misses) / len(misses))
        h2d = 0
        if fetching:
            widths = sel.widths.tolist()
            for l, (wk, wx) in enumerate(widths):
                nbytes = fx.layer_bytes(wk, wx)
                h2d += nbytes
                marks = copies.get(l)
                if trace and marks is not None:
                    a0, b0 = marks
                    self.spans.append(("H2D", f"L{l}", a0, b0, {"step": plan.step, "bytes": nbytes}))
        if trace:
            self.host_spans.append(("Host", "end", t_end, time.perf_counter(), {"step": plan.step}))
        return tok, h2d, d2h, sel.recomputed

    def _throttle(self, layer: int, traced_step: int | None) -> None:
        """With ``run_ahead_layers`` k: wait until the GPU has finished the layer issued k
        layers ago, so at most k layers are queued ahead of it. On a traced step the wait
        is a host span: where the GPU, not the host, sets the pace."""
        if not self.ahead_evt:
            return
        e = self.ahead_evt[self.issued_layers % len(self.ahead_evt)]
        if self.issued_layers >= len(self.ahead_evt):
            t0 = time.perf_counter()
            e.synchronize()
            if traced_step is not None:
                self.host_spans.append(("Host", f"throttle L{layer}", t0, time.perf_counter(), {"step": traced_step}))
        e.record(self.d.compute)
        self.issued_layers += 1

    def _store_later(self, flush: Any, window: int) -> None:
        """On the issuing thread: store the previous step's write-through rows now, in the
        shadow of this step's GPU work, and this step's (``flush``) at the next. The newest
        tokens sit in SWA's window (resident), so no gather needs them before then; a
        window under 3 tokens cannot wait."""
        self._flush_pending()
        if window >= 3:
            self.pending_flush = flush
        else:
            flush()

    def _flush_pending(self) -> None:
        if self.pending_flush is not None:
            fn, self.pending_flush = self.pending_flush, None
            fn()

    def _decode_prefix(self, plan: StepPlan, last: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
        d, pc = self.d, self.prefix
        assert pc is not None
        n = plan.context_len
        pos = n - 1
        cpu_prev, cpu_now = self.cpu_prev, plan.cpu_kv_tokens
        trace = plan.step in self.traced
        pc.marks.clear()
        st = self.step_fn
        pc.stage_step(n, cpu_prev)
        st.begin(last, pos)
        h2d = pc.prefetch(0, cpu_prev, self.tl.mark)
        d2h = 0
        for l in range(self.m.num_layers):
            if l + 1 < self.m.num_layers:
                h2d += pc.prefetch(l + 1, cpu_prev, self.tl.mark)
            s = self.tl.mark(d.compute) if trace else None
            st.pre(l)
            w0 = self.tl.mark(d.compute) if trace else None
            pc.wait_fetched(l)
            if trace:
                self.spans.append(("GPU compute", f"wait copy L{l}", w0, self.tl.mark(d.compute), {"step": plan.step}))
            st.post(l)
            pc.release(l)
            d2h += pc.spill(l, cpu_prev, cpu_now)
            if trace:
                self.spans.append(("GPU compute", f"L{l}", s, self.tl.mark(d.compute), {"step": plan.step}))
            self._throttle(l, plan.step if trace else None)
        if trace:
            for l, a, b in pc.marks:
                self.spans.append(("H2D", f"L{l}", a, b, {"step": plan.step}))
        self.cpu_prev = pc.cpu_n = cpu_now
        return st.end(), h2d, d2h, 0

    # -- result -----------------------------------------------------------------------------------
    def _result(
        self, start: Any, step_marks: list, tokens: list[torch.Tensor], oom: OutOfMemory | None, wall: float
    ) -> RealRun:
        tl = self.tl
        t0 = tl.seconds(start)
        records: list[StepRecord] = []
        prev = t0
        peak_cpu = 0
        for plan, mark, h2d, d2h, rec, gpu_b, cpu_b in step_marks:
            end = tl.seconds(mark)
            records.append(
                StepRecord(
                    step=plan.step,
                    phase=plan.phase,
                    start_s=prev - t0,
                    end_s=end - t0,
                    context_len=plan.context_len,
                    attended_tokens=plan.attended_tokens,
                    h2d_bytes=h2d,
                    d2h_bytes=d2h,
                    recomputed_tokens=rec,
                    recompute_ratio=plan.recompute_ratio,
                    gpu_bytes=gpu_b,
                    cpu_bytes=cpu_b,
                    tokens_out=plan.generated,
                    batch=plan.batch,
                )
            )
            peak_cpu = max(peak_cpu, cpu_b)
            prev = end
        events: list[tuple[str, str, float, float, dict[str, Any]]] = []
        for lane, name, a, b, args in self.spans:
            sa = tl.seconds(a) - t0
            events.append((lane, name, sa, max(0.0, tl.seconds(b) - t0 - sa), args))
        for lane, name, a, b, args in self.host_spans:
            # host clock -> the run's axis (the CUDA origin was recorded right after a sync)
            events.append((lane, name, a - tl.origin_host - t0, b - a, args))
        total = records[-1].end_s if records else 0.0
        er = EngineResult(
            steps=records,
            log=EventLog.of(events),
            memory_log=[(r.end_s, r.gpu_bytes, r.cpu_bytes) for r in records],
            oom=oom,
            peak_gpu_bytes=float(self.d.gpu_peak_bytes()),
            peak_cpu_bytes=float(peak_cpu),
            total_time_s=total,
            sim_events=0,
            sim_wall_s=wall,
            trace_truncated_at_step=self.opts.layer_trace_steps,
            policy_summary=self.policy.summary(),
        )
        toks = torch.stack(tokens, dim=1).cpu() if tokens else torch.zeros(self.B, 0, dtype=torch.long)
        info: dict[str, Any] = {
            "device": torch.cuda.get_device_name(self.d.dev) if self.d.cuda else "cpu",
            "torch": torch.__version__,
            "weights": self.model.source,
            "selection": self.opts.selection,
            "pools_bytes": dict(self.d.allocated),
            "pinned_host_bytes": self.d.pinned_bytes,
            "wall_s": wall,
            "plan_s": self.plan_s,
            "traced_steps": sorted(self.traced),
        }
        if self.planned_misses:
            info["planned_misses_per_seq_layer"] = sum(self.planned_misses) / len(self.planned_misses)
            info["pure_swa_misses_per_seq_layer"] = sum(self.free_misses) / len(self.free_misses)
        return RealRun(er, toks, info)
