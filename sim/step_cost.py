"""Cost of a planned layer and step: the one definition both the engine and the
schedulers' optimisers use.

A layer's work splits over four resources that run concurrently: the CPU (gathering
host-resident rows into pinned staging), the H2D copy engine, the GPU, and the D2H
copy engine. ``LayerTimes`` gives each one's busy time for a LayerPlan, and the time
the host takes to issue the layer's GPU work (``host_s``; zero unless the profile has
measured the real backend's host costs). With the device gather (``device_gather``) the
CPU gathers nothing: the H2D time is a GPU kernel's read of the rows from pinned host
memory (``CostModel.zero_copy_layer_s``), and the compute beside it runs slower.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .costs import CostModel, SelectionShape
from .hardware import HardwareProfile
from .models import (
    ModelSpec,
    hidden_bytes_per_token_per_layer,
    int8_scale_bytes_per_token_per_layer,
    kv_bytes_per_token_per_layer,
    kv_recompute_gemm_shape,
    layer_gemm_shapes,
    lm_head_gemm_shape,
    prompt_importance_elements,
    recompute_width_bucket,
    stored_kv_bytes_per_token_per_layer,
)
from .plan import LayerPlan


@dataclass(frozen=True, slots=True)
class LayerTimes:
    gather_s: float
    h2d_s: float
    compute_s: float
    d2h_s: float
    h2d_bytes: float
    d2h_bytes: float
    host_s: float = 0.0


@dataclass
class StepCoster:
    """Times LayerPlans for one model, batch and KV format; memoises by plan."""

    model: ModelSpec
    batch: int
    cost: CostModel
    int8_kv: bool = False
    swa: bool = False  # decode layers update SWA's importance scores
    cache: str = "slots"  # the real backend's cache layout: slots, swa, spill, prefix (decode_layer_us key)
    selection: SelectionShape | None = None  # a spilling run's selection graph (its GPU time starts each step)
    device_gather: bool = False  # a GPU kernel reads fetched rows from pinned host memory (policy.gather: device)
    importance_history: int = 0  # SWA: steps summed into importance (the prefill's prompt importance rows)
    kv_compressed: bool = False  # KV stored compressed (kv_bytes), attended de-compressed (fp16; FlexGen)
    _cache: dict[LayerPlan, LayerTimes] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.kv_bytes = stored_kv_bytes_per_token_per_layer(self.model, self.int8_kv)
        self.kv_fp16_bytes = kv_bytes_per_token_per_layer(self.model)
        self.hidden_bytes = hidden_bytes_per_token_per_layer(self.model)
        # the rows a fetched token's KV moves as on the host gather: INT8 values and their
        # fp16 scales lie in two host arrays, gathered and copied apart
        scale = int8_scale_bytes_per_token_per_layer(self.model)
        self.kv_row_bytes = (self.kv_bytes - scale, scale) if self.int8_kv else (self.kv_bytes,)
        # The modelled executor gathers on the thread that issues GPU work (the real
        # backend's inline fetch) wherever the profile measured its host; a profile without
        # host costs models an ideal executor with a separate gather worker.
        self.host_zero = self.cost.hw.host.is_zero
        self.inline_fetch = not self.host_zero

    def with_hardware(self, hw: HardwareProfile) -> StepCoster:
        """This coster (model, batch, layout, selection) timing with another profile."""
        return replace(self, cost=CostModel(hw))

    def use_cache_layout(self, cache: str) -> None:
        """The real backend's cache layout, once the policy knows it (times made so far are
        forgotten)."""
        self.cache = cache
        self._cache.clear()

    # -- GPU compute pieces ----------------------------------------------------
    def dense_layer_compute_s(self, m: int, decode: bool = False) -> float:
        """GEMMs, norms and activations of one layer on m tokens (attention excluded);
        decode: one token for each of m sequences."""
        c, md = self.cost, self.model
        t = sum(c.gemm_s(m, n, k, md.dtype_bytes) for _, n, k in layer_gemm_shapes(md))
        measured = self._by_layout(self.cost.hw.decode_layer_us if decode else self.cost.hw.prefill_layer_gpu_us)
        if measured is not None:
            # the layer's kernels beyond its GEMMs (decode: many small ones; prefill: passes
            # over the prompt's activations), as the real backend runs them
            return t + max(0.0, measured[0] + m * measured[1]) * 1e-6
        ew_bytes = m * (6 * md.hidden_size + 3 * md.ffn_dim) * md.dtype_bytes
        return t + c.elementwise_s(ew_bytes) + 2 * c.launch_s

    def prompt_importance_s(self, seqs: int, prompt: int) -> float:
        """A SWA prefill layer's importance of the prompt: the attention of its last
        min(history, prompt) query rows over the prompt, per element of sequences x query
        heads x rows x prompt (``prefill_importance_ps``; 0 where the profile folds it into
        ``prefill_layer_gpu_us``)."""
        if not self.swa or self.importance_history <= 0:
            return 0.0
        ps = self._by_layout(self.cost.hw.prefill_importance_ps)
        if ps is None:
            return 0.0
        return ps * 1e-12 * prompt_importance_elements(self.model, seqs, self.importance_history, prompt)

    def _by_layout(self, table: dict[str, Any]) -> Any:
        """A profile entry keyed 'family/cache' for this coster's layout; the spill layout
        falls back to the SWA one (a profile from before the spill layout was measured)."""
        layouts = (self.cache, "swa") if self.cache == "spill" else (self.cache,)
        return next((table[f"{self.model.family}/{k}"] for k in layouts if f"{self.model.family}/{k}" in table), None)

    def lm_head_s(self, m: int) -> float:
        n, k = lm_head_gemm_shape(self.model)
        return self.cost.gemm_s(m, n, k, self.model.dtype_bytes) + self.cost.elementwise_s(
            m * self.model.hidden_size * self.model.dtype_bytes
        )

    def recompute_s(self, tokens_total: int) -> float:
        """GPU time of one layer's recompute of ``tokens_total`` rows (all sequences)."""
        if tokens_total <= 0:
            return 0.0
        n, k = kv_recompute_gemm_shape(self.model)
        t = self.cost.gemm_s(tokens_total, n, k, self.model.dtype_bytes)
        extra = self.cost.hw.recompute_layer_us.get(self.model.family)
        return t + (max(0.0, extra[0] + tokens_total * extra[1]) * 1e-6 if extra is not None else 0.0)

    def recompute_rows(self, tokens: int) -> int:
        """Rows per sequence a layer recomputing ``tokens`` tokens per sequence runs its
        GEMM on: the real backend's width bucket where the profile models its executor
        (a measured host), else exactly ``tokens``."""
        if self.host_zero or tokens <= 0:
            return tokens
        return recompute_width_bucket(tokens, self.selection.global_max if self.selection else None)

    # -- one layer --------------------------------------------------------------
    def layer_times(self, lp: LayerPlan) -> LayerTimes:
        hit = self._cache.get(lp)
        if hit is not None:
            return hit
        c, md = self.cost, self.model
        b = lp.seqs or self.batch
        m = b * lp.new_tokens
        compute = lp.sub_batches * self.dense_layer_compute_s(max(1, m // lp.sub_batches), decode=not lp.prefill)
        if lp.prefill:
            compute += c.attention_prefill_s(b, md.num_heads, md.head_dim, lp.new_tokens)
            compute += self.prompt_importance_s(b, lp.new_tokens)
        else:
            gpu_attended = lp.attended_tokens - lp.cpu_attention_tokens
            kv_read = b * gpu_attended * (self.kv_fp16_bytes if self.kv_compressed else self.kv_bytes)
            compute += c.attention_decode_s(lp.attention_passes * kv_read, self.int8_kv, lp.attention_contiguous)
        compute += self.recompute_s(b * self.recompute_rows(lp.recompute_tokens))
        if self.int8_kv:
            compute += c.quantize_int8_s(m * self.kv_fp16_bytes)
        # the host gather's parts as (bytes, row bytes): KV rows (INT8: values, then scales),
        # and layer inputs x for the recompute; the executor gathers and copies each apart
        rows = [(lp.h2d_kv_tokens, rb) for rb in self.kv_row_bytes] + [(lp.recompute_tokens, self.hidden_bytes)]
        parts = [(b * t * rb, rb) for t, rb in rows if t]
        fetch_bytes = sum(n for n, _ in parts)
        gather = 0.0
        device_gather = self.device_gather and not lp.contiguous_fetch and bool(parts)
        if not lp.contiguous_fetch and parts and not device_gather:
            h = self.cost.hw.host
            gather = sum(self.gather_part_s(n) for n, _ in parts) + 1e-6 * (
                h.at("fetch_layer_us", b) + (len(parts) - 1) * h.at("fetch_part_us", b)
            )
        if lp.cpu_attention_tokens:
            # attention on the CPU over host-resident KV; q goes down and o comes back up
            flops = 4.0 * b * md.num_heads * md.head_dim * lp.cpu_attention_tokens
            cpu_attn = c.cpu_attention_s(b * lp.cpu_attention_tokens * self.kv_bytes, flops, lp.cpu_attention_passes)
            if lp.cpu_attention_inline:
                compute += cpu_attn  # the layer's GPU work stops for it
            else:
                gather += cpu_attn
        w_bytes = lp.weight_h2d_bytes * lp.weight_compression
        pinned = not lp.pageable_fetch
        kv_pinned = pinned and not lp.kv_pageable
        # token rows gathered into pinned staging travel beside the next layer's gather
        gathered = not lp.contiguous_fetch and pinned
        if device_gather:
            # one kernel a layer on the copy stream (an INT8 scale row read beside its KV
            # row, so KV rows move as one part). While the two overlap (at most the shorter
            # of them) each slows the other: the compute by the SMs the gather holds, the
            # gather by the SMs and memory the compute holds
            dev_parts = [
                (b * lp.h2d_kv_tokens * self.kv_bytes, self.kv_bytes),
                (b * lp.recompute_tokens * self.hidden_bytes, self.hidden_bytes),
            ]
            h2d = c.zero_copy_layer_s(dev_parts) + c.h2d_s(w_bytes, pinned=pinned)
            overlap = min(compute, h2d)
            compute += c.hw.zero_copy.compute_slowdown * overlap
            h2d += c.hw.zero_copy.gather_slowdown * overlap
        else:
            h2d = (c.fetch_h2d_s(fetch_bytes) if gathered else c.h2d_s(fetch_bytes, pinned=kv_pinned)) + c.h2d_s(
                w_bytes, pinned=pinned
            )
        if lp.codec_bytes or lp.codec_kernels:
            compute += lp.codec_bytes / c.hbm_bytes_per_s + lp.codec_kernels * c.launch_s
        elif lp.weight_compression < 1.0 and lp.weight_h2d_bytes:
            compute += c.elementwise_s(lp.weight_h2d_bytes)  # de-compress streamed weights on the GPU
        d2h_bytes = b * (lp.d2h_kv_tokens * self.kv_bytes + lp.d2h_hidden_tokens * self.hidden_bytes)
        d2h = c.d2h_s(d2h_bytes, pinned=not lp.kv_pageable)
        if lp.cpu_attention_tokens:
            act = b * md.hidden_size * md.dtype_bytes
            d2h += c.d2h_s(act)
            h2d += c.h2d_s(act)
            fetch_bytes += act
            d2h_bytes += act
        if lp.activation_offload:
            # the hidden states of each GPU batch come up from the host before the layer and go
            # back after it (FlexGen's activations on the CPU)
            act = m * md.hidden_size * md.dtype_bytes
            h2d += lp.sub_batches * c.h2d_s(act / lp.sub_batches)
            d2h += lp.sub_batches * c.d2h_s(act / lp.sub_batches)
            fetch_bytes += act
            d2h_bytes += act
        out = LayerTimes(gather, h2d, compute, d2h, fetch_bytes + w_bytes, d2h_bytes, self.host_issue_s(lp))
        self._cache[lp] = out
        return out

    def gather_part_s(self, nbytes: float) -> float:
        """CPU time to gather one part of a layer's fetch (KV rows, or inputs x) into pinned
        staging: the executor's own gathers where calibration measured them in the host
        probes (``host.gather_gbps``), else the ``cpu_gather`` microbenchmark."""
        h = self.cost.hw.host
        if h.gather_gbps > 0 and self.inline_fetch:
            return h.gather_part_us * 1e-6 + nbytes / (h.gather_gbps * 1e9)
        return self.cost.cpu_gather_s(nbytes)

    def host_issue_s(self, lp: LayerPlan) -> float:
        """Host time to issue one layer's GPU work (the profile's ``host`` costs)."""
        h, b = self.cost.hw.host, lp.seqs or self.batch
        if lp.prefill:
            return h.at("prefill_layer_us", b) * 1e-6
        us = h.at("layer_us", b) + (h.at("importance_us", b) if self.swa else 0.0)
        if lp.contiguous_fetch:
            us += h.at("prefix_us", b) if lp.h2d_kv_tokens else 0.0
        else:
            us += h.at("spill_layer_us", b) if lp.d2h_kv_tokens else 0.0
            us += h.at("recompute_us", b) if lp.recompute_tokens else 0.0
            if self.device_gather and (lp.h2d_kv_tokens or lp.recompute_tokens):
                us += self.cost.hw.zero_copy.issue_us
        return us * 1e-6

    def flush_s(self, times: list[LayerTimes], prefill: bool = False) -> float:
        """Host time, at a decode step's end, to store its write-through rows (every layer's
        new K, V and x, the step's D2H bytes) into the host copy: the real backend's
        spilling layout does it on the issuing thread (inline fetch); the prefill's rows
        go down straight into the host copy. The host probes time these stores apart
        (``host.flush_us``, ``host.flush_gbps``). Zero where they did not: those probes'
        per-layer fields already hold the store (it runs inside the steps they time), so
        adding it again would count it twice. Zero too where the profile does not model
        the real backend's host, and for other layouts."""
        h = self.cost.hw.host
        if prefill or self.cache != "spill" or not self.inline_fetch or h.flush_gbps <= 0:
            return 0.0
        return h.flush_us * 1e-6 + sum(t.d2h_bytes for t in times) / (h.flush_gbps * 1e9)

    def step_host_s(self) -> float:
        """Per decode step host time outside the layers: the step's end (LM head, the
        write-through's issue), the run loop's bookkeeping, the next selection's inputs."""
        return self.cost.hw.host.at("step_us", self.batch) * 1e-6

    def round_trip_host_s(self) -> float:
        """A round-trip step's host time after its selection's host part has arrived
        (reading it, setting up the gathers), beyond ``step_host_s``."""
        return self.cost.hw.host.at("round_trip_us", self.batch) * 1e-6

    def selection_s(self, plan_round_trip: bool) -> float:
        """GPU time of the step's selection (and the copy of its host part), which the host
        waits for before it gathers: a round-trip step of a spilling run."""
        return self.cost.selection_s(self.selection) if plan_round_trip else 0.0

    def pipelined_estimate_s(self, layers: tuple[LayerPlan, ...] | list[LayerPlan]) -> float:
        """Makespan of gather -> H2D -> compute over the layers (a 3-stage flow shop),
        each stage FIFO, the next layer's fetch overlapping this layer's compute."""
        g_end = h_end = c_end = 0.0
        for lp in layers:
            t = self.layer_times(lp)
            g_end = g_end + t.gather_s
            h_end = max(h_end, g_end) + t.h2d_s
            c_end = max(c_end, h_end) + max(t.compute_s, t.host_s)
        return c_end

    def host_stage_s(self, t: LayerTimes) -> float:
        """A layer's time on the issuing thread: its issue, plus its gather when inline."""
        return t.host_s + (t.gather_s if self.inline_fetch else 0.0)
