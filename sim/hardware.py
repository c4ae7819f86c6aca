"""Hardware profiles: the numbers the cost model runs on.

A profile is a YAML file in ``hardware_profiles/`` (or any path). ``source`` says whether
its numbers come from a datasheet or were measured by ``alisa calibrate``. A measured
profile may carry ``tables``: time against size per operation, which override the
analytic roofline terms where present.
"""

from __future__ import annotations

import hashlib
import json
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, field_validator, model_validator

from .bundled import package_dir
from .errors import InputError

GB = 1e9  # every *_gb and *_gbps field is decimal: 1 GB = 1e9 bytes


class OpTable(BaseModel):
    """Measured time of one operation against its size (piecewise-linear in size)."""

    model_config = ConfigDict(extra="forbid")

    size: list[float] = Field(description="operation size (bytes, tokens or FLOPs, as the key says)")
    seconds: list[float]
    fit_rel_error: float | None = None

    @model_validator(mode="after")
    def _check(self) -> OpTable:
        if len(self.size) != len(self.seconds) or len(self.size) < 2:
            raise ValueError("size and seconds must have the same length, at least 2")
        if any(b <= a for a, b in pairwise(self.size)):
            raise ValueError("size must be strictly increasing")
        if any(s <= 0 for s in self.size) or any(t <= 0 for t in self.seconds):
            raise ValueError("sizes and times must be positive")
        return self


UsOrLine = NonNegativeFloat | tuple[float, float]


class HostIssue(BaseModel):
    """Host time to issue the real backend's work, in microseconds. ``alisa calibrate``
    measures it by running the executor on narrow models (hidden 512: the host, not the
    GPU, sets the pace) at two depths and two batch sizes, separating per-step from
    per-layer time and fixed from per-sequence cost. Each field is a number, or
    [fixed, per sequence] (its cost at batch b is fixed + b x per sequence). Zero
    everywhere (the default, and datasheet profiles) models an executor whose host never
    holds the GPU up."""

    model_config = ConfigDict(extra="forbid")

    prefill_layer_us: UsOrLine = Field(0.0, description="one prefill layer")
    layer_us: UsOrLine = Field(0.0, description="one decode layer: graph replays, the new token's KV, attention")
    importance_us: UsOrLine = Field(0.0, description="SWA's importance update, per decode layer")
    spill_layer_us: UsOrLine = Field(
        0.0,
        description="per decode layer of a run whose KV spills: write-through "
        "to the host, waiting for and landing fetched rows",
    )
    recompute_us: UsOrLine = Field(0.0, description="per decode layer with Phase III recompute")
    prefix_us: UsOrLine = Field(
        0.0,
        description="per decode layer fetching a host KV prefix (FlexGen-like): its copy, the stream waits, the spill",
    )
    step_us: UsOrLine = Field(0.0, description="per decode step: embedding, LM head, bookkeeping")
    fetch_layer_us: UsOrLine = Field(
        0.0,
        description="the host fetch worker, per decode layer that gathers rows: "
        "its index lists and copy issue, beyond the gather itself",
    )
    fetch_part_us: UsOrLine = Field(
        0.0,
        description="per further part a fetching layer gathers and copies (Phase "
        "III layers fetch KV rows and layer inputs x: two gathers, two "
        "copies), beyond ``fetch_layer_us``",
    )
    gather_part_us: NonNegativeFloat = Field(
        0.0,
        description="the executor's own gather of host rows into pinned "
        "staging, per part (KV rows, inputs x): fixed cost",
    )
    gather_gbps: NonNegativeFloat = Field(
        0.0, description="... and its rate; 0: gathers are timed by the profile's ``cpu_gather`` microbenchmark"
    )
    flush_us: NonNegativeFloat = Field(
        0.0,
        description="a spilling step's store of its write-through rows (every "
        "layer's new K, V and x) into the host copy: fixed cost",
    )
    flush_gbps: NonNegativeFloat = Field(
        0.0,
        description="... and its rate; 0: not measured apart, so the probes' "
        "per-layer fields hold it and the store adds nothing",
    )
    round_trip_us: UsOrLine = Field(
        0.0,
        description="per decode step that needs the GPU's selection on the host "
        "(ALISA with spilled KV): beyond the selection graph's GPU time "
        "(``selection``), the wake-up, the copy, the gathers' start",
    )

    def at(self, name: str, batch: int) -> float:
        """Field ``name`` at batch size ``batch``, in microseconds (never below zero)."""
        v = getattr(self, name)
        return max(0.0, v[0] + batch * v[1]) if isinstance(v, tuple) else float(v)

    @property
    def is_zero(self) -> bool:
        return not any(self.at(f, 1) for f in type(self).model_fields)

    def scaled(self, factor: float) -> HostIssue:
        """The same host ``factor`` times slower: every time ``factor`` times, every rate
        divided by it (``alisa validate --host-conditioned``: a measured run's host speed)."""
        if not factor > 0:
            raise ValueError(f"a host speed factor must be positive, got {factor}")
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            v = getattr(self, name)
            if name.endswith("_gbps"):
                out[name] = v / factor
            else:
                out[name] = (v[0] * factor, v[1] * factor) if isinstance(v, tuple) else v * factor
        return HostIssue(**out)


class SelectionCost(BaseModel):
    """GPU time of the real backend's selection for a spilling ALISA step (one graph over
    every layer and sequence in the run's fixed shapes, ``runtime/spill_select.py``, plus
    the copy of its host part), in terms of ``SelectionShape``: fixed + ns per element of
    L x B x N (positions), L x B x (C + 1) (cache slots) and L x B x K (global part).
    ``alisa calibrate`` times the graph over a grid of shapes. Zero (the default, and
    datasheet profiles) models a selection that costs the GPU nothing."""

    model_config = ConfigDict(extra="forbid")

    fixed_us: NonNegativeFloat = 0.0
    per_position_ns: NonNegativeFloat = 0.0
    per_slot_ns: NonNegativeFloat = 0.0
    per_global_ns: NonNegativeFloat = 0.0
    fit_rel_error: float | None = Field(None, description="mean |relative error| of the fit over the measured shapes")


class ZeroCopyGather(BaseModel):
    """The device gather (``policy.gather: device``): a GPU kernel on the copy stream reads
    a layer's fetched token rows straight from pinned host memory over PCIe (unified
    addressing), so no CPU gathers them and no staging copy runs. ``alisa calibrate``
    times the real backend's kernel by bytes, how it and the decode layers running beside
    it slow each other, and the host's time to issue it. Unmeasured (zero, datasheet profiles): the
    pinned H2D rate, no slowdown, no host cost (an assumption, not a measurement)."""

    model_config = ConfigDict(extra="forbid")

    fixed_us: NonNegativeFloat = Field(0.0, description="per layer's gather: launch and first-row latency")
    gbps: NonNegativeFloat = Field(
        0.0,
        description="rows read from pinned host memory per second (decimal GB), "
        "for rows of other sizes than ``row_gbps`` has; 0: the pinned "
        "H2D copy's rate",
    )
    row_gbps: dict[int, PositiveFloat] = Field(
        default_factory=dict,
        description="the rate by row size in bytes (a program copies a row "
        "per iteration: small rows keep fewer bytes in flight); "
        "a size between two measured ones takes the smaller's",
    )
    compute_slowdown: NonNegativeFloat = Field(
        0.0, description="extra share of GPU compute time while a gather runs beside it (the SMs and memory it holds)"
    )
    gather_slowdown: NonNegativeFloat = Field(
        0.0,
        description="extra share of the gather's time while the decode "
        "layers run beside it (their kernels hold the SMs "
        "and memory its reads wait on)",
    )
    issue_us: NonNegativeFloat = Field(
        0.0, description="host time to issue one layer's gather (graph replay, stream events)"
    )
    fit_rel_error: float | None = Field(None, description="mean |relative error| of the bytes fit")

    def rate_gbps(self, row_bytes: float | None) -> float:
        """The rate for rows of ``row_bytes``: the largest measured size not above it,
        else ``gbps``. Below every measured size, the smallest's rate scaled down by the
        row's share of it: a program copies a row per round trip, so a smaller row reads
        the same rows per second and fewer bytes."""
        if not self.row_gbps or row_bytes is None:
            return self.gbps
        sizes = sorted(self.row_gbps)
        fit = [s for s in sizes if s <= row_bytes]
        if fit:
            return self.row_gbps[fit[-1]]
        return self.row_gbps[sizes[0]] * row_bytes / sizes[0]


class HardwareProfile(BaseModel):
    """One GPU plus its host. Peak figures; efficiencies turn them into achieved rates."""

    model_config = ConfigDict(extra="forbid")

    name: str
    source: Literal["datasheet", "measured", "fitted"] = Field(
        description="datasheet figures and our assumptions; measured by alisa calibrate; or datasheet figures "
        "with efficiency factors fitted to published measurements of that machine (benchmarks/anchors.py)"
    )
    provenance: str = Field(description="where the numbers come from (datasheet, calibrate run)")
    gpu_name: str = ""
    gpu_memory_gb: PositiveFloat
    hbm_gbps: PositiveFloat
    fp16_tflops: PositiveFloat
    pcie_h2d_gbps: PositiveFloat
    pcie_d2h_gbps: PositiveFloat
    pcie_latency_us: float = Field(10.0, ge=0)
    pcie_pageable_factor: float = Field(0.4, gt=0, le=1, description="pageable / pinned bandwidth")
    cpu_memory_gb: PositiveFloat
    cpu_gather_gbps: PositiveFloat
    cpu_memory_gbps: PositiveFloat | None = Field(
        None, description="host DRAM bandwidth (CPU attention's passes over the KV); absent: cpu_gather_gbps"
    )
    cpu_memory_efficiency: float = Field(0.7, gt=0, le=1, description="share of cpu_memory_gbps CPU kernels reach")
    cpu_tflops: PositiveFloat = 1.0
    kernel_launch_us: float = Field(5.0, ge=0)
    # Shares of peak that real kernels reach. Datasheet profiles use our assumptions
    # (documented in docs/simulator.md); measured profiles fold them into the rates.
    gemm_efficiency: float = Field(0.7, gt=0, le=1)
    hbm_efficiency: float = Field(0.8, gt=0, le=1)
    pcie_efficiency: float = Field(0.8, gt=0, le=1)
    attention_efficiency: float = Field(0.5, gt=0, le=1, description="prefill attention, of fp16 peak")
    int8_attention_overhead: float = Field(0.15, ge=0, description="extra time of dequant in attention")
    gpu_reserved_gb: float = Field(1.0, ge=0, description="CUDA context, allocator slack")
    tables: dict[str, OpTable] = Field(default_factory=dict)
    host: HostIssue = Field(default_factory=HostIssue, description="host issue costs of the real backend")
    zero_copy: ZeroCopyGather = Field(
        default_factory=ZeroCopyGather, description="the device gather of fetched rows over PCIe (policy.gather)"
    )
    selection: SelectionCost = Field(
        default_factory=SelectionCost, description="GPU time of the real backend's spilling selection, per step"
    )
    recompute_layer_us: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="GPU time of one layer's Phase III recompute beyond its K/V GEMM (norm, RoPE, packing, "
        "slot writes) as [fixed, per recomputed row] microseconds (rows: sequences x the width bucket), "
        "keyed by model family; measured by replaying the real backend's recompute graphs. Absent: "
        "the K/V GEMM alone",
    )
    decode_layer_us: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="GPU time of one decode layer beyond its GEMMs and attention (norms, RoPE, activations, "
        "residuals, cache writes, the kernels' fixed cost), as [fixed, per sequence] microseconds, "
        "keyed 'family/cache' (cache: slots, swa, spill, prefix); measured by replaying the real backend's "
        "decode graphs. Absent: one pass over the activations plus launch latencies",
    )
    prefill_layer_gpu_us: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="GPU time of one prefill layer beyond its GEMMs and causal attention (RoPE, norms, "
        "activations, the cache's prompt placement and copies down), as [fixed, per prompt token] "
        "microseconds (tokens: sequences x prompt), keyed 'family/cache' as decode_layer_us; measured "
        "by running the real backend's prefill. Absent: one pass over the activations",
    )
    prefill_importance_ps: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="a SWA prefill layer's importance of the prompt (the attention of its last `rows` query "
        "positions, rows = min(importance history, prompt)), in picoseconds per element: sequences x "
        "query heads x rows x prompt tokens, keyed 'family/cache' (swa, spill); measured as the "
        "prefill layer's growth between two importance histories. prefill_layer_gpu_us is then the "
        "rest. Absent: folded into prefill_layer_gpu_us at the calibration probe's history",
    )
    meta: dict[str, Any] = Field(default_factory=dict, description="device, driver, versions, date")

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, v: dict[str, OpTable]) -> dict[str, OpTable]:
        plain = {
            "h2d_pinned",
            "d2h_pinned",
            "h2d_pageable",
            "d2h_pageable",
            "cpu_gather",
            "attention_decode",
            "attention_decode_contiguous",
            "quantize_int8",
            "h2d_d2h_concurrent",
            "h2d_fetch",
        }
        for key in v:
            if key not in plain and not key.startswith("gemm:"):
                raise ValueError(f"unknown table '{key}' (known: {sorted(plain)} and gemm:NxK)")
        return v

    @property
    def gpu_memory_bytes(self) -> float:
        return self.gpu_memory_gb * GB

    @property
    def cpu_memory_bytes(self) -> float:
        return self.cpu_memory_gb * GB

    def fingerprint(self) -> str:
        """A short hash of every field: two profiles of one name (a GPU calibrated twice)
        plan differently, and a measured run records which one planned it."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _bundled_dir() -> Path:
    return package_dir("alisa.hardware_profiles")


def profile_names() -> list[str]:
    return sorted(p.stem for p in _bundled_dir().glob("*.yaml"))


def profile_path(name_or_path: str) -> Path:
    """A bundled profile's name, or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise InputError(f"hardware profile file '{name_or_path}' does not exist", field="hardware")
        return p
    cand = _bundled_dir() / f"{name_or_path}.yaml"
    if not cand.is_file():
        raise InputError(
            f"unknown hardware profile '{name_or_path}'; known: {', '.join(profile_names())}",
            field="hardware",
        )
    return cand


def read_yaml(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", file=str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})", file=str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"malformed YAML{where}: {getattr(e, 'problem', e)}", file=str(path)) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        # a tag's value that its constructor rejects (!!timestamp 2020-13-45, !!float x)
        raise InputError(
            f"malformed YAML: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=str(path)
        ) from None


def profile_config(name_or_path: str) -> dict[str, Any]:
    """A profile as a plain mapping, before validation (so it can be overridden)."""
    path = profile_path(name_or_path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise InputError("a hardware profile must be a mapping", file=str(path))
    return data


def load_profile(name_or_path: str) -> HardwareProfile:
    from .validation import validate_model  # local: avoids a cycle at import

    path = profile_path(name_or_path)
    return validate_model(HardwareProfile, profile_config(name_or_path), file=str(path))
