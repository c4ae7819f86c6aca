"""Cost model: the time of each operation on a hardware profile.

Analytic terms are rooflines plus launch latency; a measured profile's tables replace
them where present (piecewise-linear in size between measured points, extrapolated at
the edge rate). The simulator engine and the schedulers' optimisers both call this module,
so there is one definition of what each operation costs.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from .hardware import GB, HardwareProfile, OpTable


@dataclass(frozen=True)
class _Interp:
    """Piecewise-linear in size between the measured points, the smallest measured time
    below them, the last segment's incremental rate beyond them.

    Linear in size, not in log-log: each table is a latency-plus-bytes-over-bandwidth
    shape segment by segment, which a log-log chord over-states between measured points.
    Each interior point of calibration's own H100 rows left out and predicted: the
    log-log chord was high on nearly every table (attention decode +3.0 % median), the
    linear one no worse on three in four (docs/calibration.md).
    """

    x: tuple[float, ...]
    y: tuple[float, ...]

    @classmethod
    def of(cls, t: OpTable) -> _Interp:
        return cls(tuple(t.size), tuple(t.seconds))

    def __call__(self, size: float) -> float:
        if size <= 0:
            return 0.0
        x, y = self.x, self.y
        if size <= x[0]:
            return y[0]  # below the grid, latency dominates: the smallest measured time
        if size >= x[-1]:
            # beyond the grid, extend at the incremental rate of the last segment
            rate = (y[-1] - y[-2]) / (x[-1] - x[-2])
            return y[-1] + max(rate, 0.0) * (size - x[-1])
        i = bisect.bisect_right(x, size) - 1
        f = (size - x[i]) / (x[i + 1] - x[i])
        return y[i] + f * (y[i + 1] - y[i])


@dataclass(frozen=True)
class SelectionShape:
    """The fixed shapes a spilling ALISA run's selection graph works in: layers L, batch B,
    positions N (prompt + generation), cache slots C per sequence and layer, and K, the
    largest global part (a - w) of the run."""

    layers: int
    batch: int
    positions: int
    slots: int
    global_max: int

    def terms(self) -> tuple[float, float, float]:
        """Elements of the graph's work: L x B x N, L x B x (C + 1), L x B x K."""
        rows = self.layers * self.batch
        return float(rows * self.positions), float(rows * (self.slots + 1)), float(rows * max(1, self.global_max))


@dataclass
class CostModel:
    hw: HardwareProfile
    _tables: dict[str, _Interp] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._tables = {k: _Interp.of(t) for k, t in self.hw.tables.items()}

    def selection_s(self, shape: SelectionShape | None) -> float:
        """GPU time of one spilling step's selection graph and its host part's copy."""
        if shape is None:
            return 0.0
        c = self.hw.selection
        n, s, k = shape.terms()
        return c.fixed_us * 1e-6 + (n * c.per_position_ns + s * c.per_slot_ns + k * c.per_global_ns) * 1e-9

    # -- derived rates --------------------------------------------------------
    @property
    def launch_s(self) -> float:
        return self.hw.kernel_launch_us * 1e-6

    @property
    def flops_per_s(self) -> float:
        return self.hw.fp16_tflops * 1e12 * self.hw.gemm_efficiency

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hw.hbm_gbps * GB * self.hw.hbm_efficiency

    def _table(self, key: str) -> _Interp | None:
        return self._tables.get(key)

    # -- GPU compute ----------------------------------------------------------
    def gemm_s(self, m: int, n: int, k: int, dtype_bytes: int = 2) -> float:
        """y[m,n] = x[m,k] W[k,n]: max(FLOPs / rate, bytes / bandwidth) + launch."""
        if m <= 0:
            return 0.0
        t = self._table(f"gemm:{n}x{k}")
        if t is not None:
            return t(m)
        flops = 2.0 * m * n * k
        bytes_ = (m * k + k * n + m * n) * dtype_bytes
        return max(flops / self.flops_per_s, bytes_ / self.hbm_bytes_per_s) + self.launch_s

    def attention_decode_s(self, kv_bytes_read: float, int8: bool = False, contiguous: bool = False) -> float:
        """One decode step's attention: memory-bound on the KV bytes it reads. ``contiguous``:
        it reads a whole cache in order (dense), timed apart where the profile measured it
        (a selection's scattered rows read slower per byte)."""
        if kv_bytes_read <= 0:
            return 0.0
        t = (self._table("attention_decode_contiguous") if contiguous else None) or self._table("attention_decode")
        base = t(kv_bytes_read) if t is not None else kv_bytes_read / self.hbm_bytes_per_s + self.launch_s
        return base * (1.0 + self.hw.int8_attention_overhead) if int8 else base

    def attention_prefill_s(self, batch: int, heads: int, head_dim: int, tokens: int) -> float:
        """Causal attention over a prompt: 4 B H d p^2 / 2 FLOPs at the attention efficiency."""
        flops = 4.0 * batch * heads * head_dim * tokens * tokens / 2.0
        rate = self.hw.fp16_tflops * 1e12 * self.hw.attention_efficiency
        return flops / rate + self.launch_s

    def elementwise_s(self, bytes_moved: float) -> float:
        """Norms, activations, residual adds: one pass over the bytes."""
        return bytes_moved / self.hbm_bytes_per_s + self.launch_s if bytes_moved > 0 else 0.0

    def quantize_int8_s(self, fp16_bytes: float) -> float:
        """Quantise fp16 KV to INT8 with per-token scales: read 2 B, write 1 B per element."""
        if fp16_bytes <= 0:
            return 0.0
        t = self._table("quantize_int8")
        return t(fp16_bytes) if t is not None else 1.5 * fp16_bytes / self.hbm_bytes_per_s + self.launch_s

    # -- transfers ------------------------------------------------------------
    def _copy_s(self, key: str, nbytes: float, chunks: int, gbps: float, pinned: bool) -> float:
        if nbytes <= 0:
            return 0.0
        chunks = max(1, chunks)
        per_chunk = nbytes / chunks
        t = self._table(f"{key}_{'pinned' if pinned else 'pageable'}")
        if t is not None:
            return chunks * t(per_chunk)
        bw = gbps * GB * self.hw.pcie_efficiency * (1.0 if pinned else self.hw.pcie_pageable_factor)
        return chunks * self.hw.pcie_latency_us * 1e-6 + nbytes / bw

    def h2d_s(self, nbytes: float, chunks: int = 1, pinned: bool = True) -> float:
        return self._copy_s("h2d", nbytes, chunks, self.hw.pcie_h2d_gbps, pinned)

    def d2h_s(self, nbytes: float, chunks: int = 1, pinned: bool = True) -> float:
        return self._copy_s("d2h", nbytes, chunks, self.hw.pcie_d2h_gbps, pinned)

    # -- host -----------------------------------------------------------------
    def fetch_h2d_s(self, nbytes: float) -> float:
        """H2D of gathered token rows from pinned staging while the next layer's gather runs
        (calibration's ``h2d_fetch`` pipeline; a plain pinned copy where not measured)."""
        if nbytes <= 0:
            return 0.0
        t = self._table("h2d_fetch")
        return t(nbytes) if t is not None else self.h2d_s(nbytes, pinned=True)

    def zero_copy_gather_s(self, nbytes: float, row_bytes: float | None = None) -> float:
        """A GPU kernel reading ``nbytes`` of scattered token rows of ``row_bytes`` each
        straight from pinned host memory (the device gather); the pinned H2D copy's time
        where not measured."""
        if nbytes <= 0:
            return 0.0
        return self.zero_copy_layer_s([(nbytes, row_bytes)])

    def zero_copy_layer_s(self, parts: Sequence[tuple[float, float | None]]) -> float:
        """One device-gather kernel reading a layer's parts, (bytes, row bytes) each: its
        programs go from one part's rows to the next's, so the fixed cost is paid once and
        each part reads at its rows' rate."""
        parts = [(n, rb) for n, rb in parts if n > 0]
        if not parts:
            return 0.0
        z = self.hw.zero_copy
        rates = [z.rate_gbps(rb) for _, rb in parts]
        if min(rates) <= 0:
            return self.h2d_s(sum(n for n, _ in parts), pinned=True)
        return z.fixed_us * 1e-6 + sum(n / (r * GB) for (n, _), r in zip(parts, rates, strict=True))

    def cpu_gather_s(self, nbytes: float) -> float:
        """Gather scattered KV rows into a pinned staging buffer on the CPU."""
        if nbytes <= 0:
            return 0.0
        t = self._table("cpu_gather")
        return t(nbytes) if t is not None else nbytes / (self.hw.cpu_gather_gbps * GB) + 2e-6

    def cpu_attention_s(self, kv_bytes_read: float, flops: float, passes: float = 1.0) -> float:
        """Attention on the CPU (FlexGen's cpu_cache_compute): bound by the host memory's
        bandwidth over ``passes`` moves of the KV bytes (the CPU gather rate where the
        profile gives none), or by FLOPs."""
        if kv_bytes_read <= 0:
            return 0.0
        hw = self.hw
        bw = hw.cpu_memory_gbps * hw.cpu_memory_efficiency if hw.cpu_memory_gbps else hw.cpu_gather_gbps
        return max(passes * kv_bytes_read / (bw * GB), flops / (hw.cpu_tflops * 1e12))
