"""Scenario schema (pydantic v2), YAML loading, `--set` overrides and sweep expansion.

A scenario is model x hardware x workload x policy. Names of models and hardware
profiles are resolved into mappings *before* overrides apply, so `--set model.num_layers=2`
or `--set hardware.pcie_h2d_gbps=25` edit the resolved values and are validated like the
file itself.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from .catalog import model_config
from .errors import InputError
from .hardware import HardwareProfile, profile_config, profile_path, read_yaml
from .models import GROUP4_COMPRESSED_FRACTION, ModelSpec, kv_bytes_per_token, weight_bytes
from .validation import validate_model


class Workload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: PositiveInt
    prompt_len: PositiveInt
    gen_len: PositiveInt


class _PolicyBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    int8_kv: bool = False
    gpu_kv_budget_gb: PositiveFloat | None = Field(
        None, description="GPU memory for KV; default: what weights and workspace leave"
    )


class AlisaPolicyConfig(_PolicyBase):
    name: Literal["alisa"]
    kv_sparsity: float = Field(0.8, ge=0.0, lt=1.0, description="share of cached tokens not attended")
    local_fraction: float = Field(0.5, gt=0.0, le=1.0, description="share of attended budget in the recent window")
    recompute: bool = True
    recompute_ratio: float | Literal["auto"] = Field(
        "auto", description="share of host-resident selected tokens recomputed; auto = per-step optimum"
    )
    selection_trace: str | None = Field(None, description="path to a selection trace (.npz)")
    selection_churn: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="without a trace: share of the global selection replaced each step (our choice)",
    )
    gpu_kv_budget_tokens: PositiveInt | None = Field(
        None,
        description="GPU-resident KV per sequence and layer, in tokens (instead of gpu_kv_budget_gb); "
        "fetch staging and importance scores come on top",
    )
    importance_history: PositiveInt | None = Field(
        None,
        description="steps of attention summed into a token's importance; default: the window "
        "length at the longest context (our choice)",
    )
    gather: Literal["host", "device"] = Field(
        "host",
        description="who gathers a step's fetched token rows: host = the CPU into pinned staging, then "
        "one H2D copy per layer (ALISA's design); device = a GPU kernel reads them straight "
        "from pinned host memory over PCIe (zero-copy), so the host neither gathers nor "
        "waits for the selection",
    )

    @model_validator(mode="after")
    def _one_budget(self) -> AlisaPolicyConfig:
        if self.gpu_kv_budget_gb is not None and self.gpu_kv_budget_tokens is not None:
            raise ValueError("give gpu_kv_budget_gb or gpu_kv_budget_tokens, not both")
        return self


class DenseGpuPolicyConfig(_PolicyBase):
    name: Literal["dense-gpu"]


class H2OPolicyConfig(_PolicyBase):
    name: Literal["h2o"]
    kv_budget: float = Field(0.2, gt=0.0, le=1.0, description="share of cached tokens kept (recent + heavy hitters)")


class AcceleratePolicyConfig(_PolicyBase):
    name: Literal["accelerate"]
    device_map: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="auto: the layers that fit stay on the GPU, the rest are offloaded (device_map='auto'); "
        "cpu: every decoder layer offloaded (the FlexGen benchmark's device map for --cpu); gpu: the "
        "whole model on the GPU (no offload: what does not fit is out of memory)",
    )
    cache: Literal["gpu", "offloaded"] = Field(
        "gpu",
        description="gpu: transformers' dynamic cache on the GPU; offloaded: its OffloadedCache "
        "(cache_implementation='offloaded'): every layer's KV in host memory, the next layer's "
        "prefetched each step, the new token's written back",
    )


class ZeroInferencePolicyConfig(_PolicyBase):
    name: Literal["zero-inference"]
    pin_memory: bool = Field(True, description="offload_param.pin_memory: weights in pinned host memory")


class FlexGenPolicyConfig(_PolicyBase):
    """FlexGen's own knobs (flex_opt.py's flags); a FlexGen command line can be pasted into
    ``command_line`` instead. Percentages left out are searched by the placement LP."""

    name: Literal["flexgen"]
    command_line: str | None = Field(
        None,
        description="FlexGen's flags as on its command line, e.g. '--gpu-batch-size 48 --num-gpu-batches 3 "
        "--percent 20 80 0 100 0 100 --cpu'; they set the fields below (which must then be left out)",
    )
    gpu_batch_size: PositiveInt | None = Field(None, description="fixed; default: searched")
    num_gpu_batches: PositiveInt | None = Field(None, description="GPU batches per block; default: batch / gpu batch")
    weights_gpu_percent: float | None = Field(None, ge=0, le=100, description="fixed; default: the LP's")
    weights_cpu_percent: float | None = Field(None, ge=0, le=100, description="default: the rest of the weights")
    cache_gpu_percent: float | None = Field(None, ge=0, le=100, description="fixed; default: the LP's")
    cache_cpu_percent: float | None = Field(None, ge=0, le=100, description="default: the rest of the cache")
    act_gpu_percent: float = Field(100, ge=0, le=100, description="activations (hidden states) on the GPU")
    act_cpu_percent: float = Field(0, ge=0, le=100, description="activations on the CPU")
    cpu_cache_compute: bool | Literal["auto"] = Field(
        "auto", description="attention on the CPU for host KV (--cpu); auto = searched"
    )
    compress_weight: bool = False
    compress_cache: bool = False
    overlap: bool = Field(True, description="overlap I/O with compute (--overlap)")
    pin_weight: bool = Field(True, description="weights in pinned host memory (--pin-weight)")
    runtime: Literal["flexgen", "alisa"] = Field(
        "flexgen",
        description="whose code runs the placement: flexgen = FlexGen's (eager PyTorch attention over a copied "
        "cache, KV in pageable host memory, its group-wise 4-bit codec); alisa = this project's real backend "
        "(fused kernels, pinned host KV; what `--backend real` runs and is validated against)",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_command_line(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("command_line"):
            from .policies.flexgen_args import fields_from_command_line

            return fields_from_command_line(data)
        return data


class VllmPolicyConfig(_PolicyBase):
    name: Literal["vllm"]
    block_size: PositiveInt = 16
    preemption: Literal["recompute", "swap"] = "recompute"
    swap_space_gb: float = Field(4.0, ge=0)
    requests: PositiveInt | None = Field(None, description="requests served; default: batch_size")
    gen_len_spread: float = Field(0.0, ge=0.0, lt=1.0, description="gen lengths uniform in gen_len x (1 +- spread)")


PolicyConfig = Annotated[
    AlisaPolicyConfig
    | DenseGpuPolicyConfig
    | H2OPolicyConfig
    | AcceleratePolicyConfig
    | ZeroInferencePolicyConfig
    | FlexGenPolicyConfig
    | VllmPolicyConfig,
    Field(discriminator="name"),
]


class OutputOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trace_max_layer_events: NonNegativeInt = Field(
        250_000, description="layer-level trace events kept; later steps are traced per step only"
    )


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="names the default output folder (results/<name>), so it is one path part")
    model: ModelSpec
    hardware: HardwareProfile
    workload: Workload
    policy: PolicyConfig
    seed: int = 0
    sweep: dict[str, list[Any]] | None = None
    search: dict[str, Any] | None = Field(
        None, description="alisa search: objective, trials, free knobs, constraints (sim/search.py)"
    )
    output: OutputOptions = Field(default_factory=OutputOptions)

    @model_validator(mode="after")
    def _command_line_matches(self) -> Scenario:
        if isinstance(self.policy, FlexGenPolicyConfig) and self.policy.command_line:
            from .policies.flexgen_args import check_run

            why = check_run(self.policy.command_line, self.model.name, self.workload.prompt_len, self.workload.gen_len)
            if why:
                raise ValueError(why)
        return self

    @field_validator("name")
    @classmethod
    def _one_path_part(cls, v: str) -> str:
        if not v.strip() or v in (".", "..") or any(c in v for c in "/\\\0"):
            raise ValueError("must be a non-empty name without '/', '\\' or NUL (it names the output folder)")
        return v


POLICY_NAMES = ("alisa", "dense-gpu", "flexgen", "vllm", "accelerate", "zero-inference", "h2o")
POLICY_CLASSES: dict[str, type[BaseModel]] = {
    "alisa": AlisaPolicyConfig,
    "dense-gpu": DenseGpuPolicyConfig,
    "flexgen": FlexGenPolicyConfig,
    "vllm": VllmPolicyConfig,
    "accelerate": AcceleratePolicyConfig,
    "zero-inference": ZeroInferencePolicyConfig,
    "h2o": H2OPolicyConfig,
}


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _resolve_names(raw: dict[str, Any], file: str) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    model = data.get("model")
    if isinstance(model, str):
        try:
            data["model"] = model_config(model)
        except InputError as e:
            raise InputError(e.reason, file=file, field="model") from None
    hw = data.get("hardware")
    if isinstance(hw, str):
        try:
            ref = hw
            if not Path(hw).is_absolute() and (Path(file).parent / hw).is_file():
                ref = str(Path(file).parent / hw)  # a profile path relative to the scenario
            profile_path(ref)
            data["hardware"] = profile_config(ref)
        except InputError as e:
            raise InputError(e.reason, file=e.file or file, field=e.field or "hardware") from None
    trace = (data.get("policy") or {}).get("selection_trace") if isinstance(data.get("policy"), dict) else None
    if isinstance(trace, str) and not Path(trace).is_absolute() and (Path(file).parent / trace).exists():
        data["policy"]["selection_trace"] = str(Path(file).parent / trace)
    return data


def parse_set(expr: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", value parsed as YAML so 32 is int and true is bool)."""
    if "=" not in expr:
        raise InputError(f"--set '{expr}' must look like dotted.path=value", field="--set")
    key, _, value = expr.partition("=")
    key = key.strip()
    if not key:
        raise InputError(f"--set '{expr}' has no field name", field="--set")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def set_path(data: dict[str, Any], dotted: str, value: Any, *, file: str, strict: bool) -> None:
    """Set data[a][b][c] = value. With strict, the field must already exist."""
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            raise InputError(f"no such field (at '{'.'.join(parts[: i + 1])}')", file=file, field=dotted)
        node = node[part]
    last = parts[-1]
    if not isinstance(node, dict):
        raise InputError("no such field", file=file, field=dotted)
    if strict and last not in node:
        raise InputError("no such field in the scenario", file=file, field=dotted)
    node[last] = value


def check_runnable(s: Scenario, file: str) -> None:
    """Reject scenarios that no policy could run: weights exceed GPU + host memory."""
    need: float = weight_bytes(s.model)
    if isinstance(s.policy, FlexGenPolicyConfig) and s.policy.compress_weight:
        need *= GROUP4_COMPRESSED_FRACTION
    have = s.hardware.gpu_memory_bytes + s.hardware.cpu_memory_bytes
    if need > have:
        raise InputError(
            f"model weights ({need / 1e9:.1f} GB) exceed GPU + CPU memory ({have / 1e9:.1f} GB)",
            file=file,
            field="model",
        )
    # every policy keeps a sequence's KV (H2O its budget's share of it) somewhere: where
    # one sequence's alone cannot fit GPU + host memory, no batch size can run
    keep = s.policy.kv_budget if isinstance(s.policy, H2OPolicyConfig) else 1.0
    context = s.workload.prompt_len + s.workload.gen_len
    one_seq = kv_bytes_per_token(s.model) * context * keep
    if one_seq > have:
        raise InputError(
            f"one sequence's KV cache at {context} tokens ({one_seq / 1e9:.1f} GB) exceeds GPU + CPU memory "
            f"({have / 1e9:.1f} GB)",
            file=file,
            field="workload.gen_len",
        )
    budget = s.policy.gpu_kv_budget_gb
    if budget is not None and budget > s.hardware.gpu_memory_gb:
        raise InputError(
            f"GPU KV budget {budget} GB exceeds the GPU's memory ({s.hardware.gpu_memory_gb} GB)",
            file=file,
            field="policy.gpu_kv_budget_gb",
        )
    trace = getattr(s.policy, "selection_trace", None)
    if trace:
        from .selection import read_trace

        read_trace(trace)  # a bad trace is reported at load time, naming the file


def build_scenario(resolved: dict[str, Any], file: str) -> Scenario:
    policy = resolved.get("policy")
    if isinstance(policy, dict) and policy.get("name") not in POLICY_NAMES:
        raise InputError(
            f"unknown policy '{policy.get('name')}'; known: {', '.join(POLICY_NAMES)}", file=file, field="policy.name"
        )
    try:
        scenario = validate_model(Scenario, resolved, file=file)
    except InputError as e:
        if e.field and e.field.startswith("policy.") and e.reason.startswith("unknown field"):
            pname = policy.get("name") if isinstance(policy, dict) else "?"
            e = InputError(
                f"not a parameter of policy '{pname}'", file=file, field=e.field.replace(f"policy.{pname}.", "policy.")
            )
        elif e.field and isinstance(policy, dict):
            e = InputError(e.reason, file=file, field=e.field.replace(f"policy.{policy.get('name')}.", "policy."))
        raise e from None
    check_runnable(scenario, file)
    return scenario


def load_resolved(path: str | Path, overrides: list[str] | None = None) -> tuple[dict[str, Any], str]:
    file = str(path)
    p = Path(path)
    if not p.is_file():
        raise InputError("scenario file does not exist", file=file)
    raw = read_yaml(p)
    if not isinstance(raw, dict):
        raise InputError("a scenario must be a YAML mapping", file=file)
    for req in ("name", "model", "hardware", "workload", "policy"):
        if req not in raw:
            raise InputError("missing required field", file=file, field=req)
    data = _resolve_names(raw, file)
    for expr in overrides or []:
        key, value = parse_set(expr)
        set_path(data, key, value, file=file, strict=False)
        data = _resolve_names(data, file) if key in ("model", "hardware") else data
    return data, file


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    data, file = load_resolved(path, overrides)
    return build_scenario(data, file)


def expand_sweep(path: str | Path, overrides: list[str] | None = None) -> list[tuple[dict[str, Any], Scenario]]:
    """Every point of the scenario's `sweep:` Cartesian product, validated up front.

    ``sweep.cases``, a list of mappings of dotted paths to values, adds explicit points:
    each case is applied after the product's values (so a case may override them), and
    the product runs once per case.
    """
    data, file = load_resolved(path, overrides)
    sweep = data.get("sweep")
    if not sweep:
        return [({}, build_scenario(data, file))]
    if not isinstance(sweep, dict):
        raise InputError("sweep must map dotted field paths to lists of values", file=file, field="sweep")
    keys = [k for k in sweep if k != "cases"]
    for k in sweep:
        if not isinstance(sweep[k], list) or not sweep[k]:
            raise InputError("a sweep entry must be a non-empty list", file=file, field=f"sweep.{k}")
    cases = sweep.get("cases") or [{}]
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or not all(isinstance(k, str) for k in case):
            raise InputError("a case maps dotted field paths to values", file=file, field=f"sweep.cases[{i}]")
    points = []
    for case in cases:
        for combo in itertools.product(*(sweep[k] for k in keys)):
            point = copy.deepcopy(data)
            point["sweep"] = None
            chosen = [*zip(keys, combo, strict=True), *case.items()]
            for k, v in chosen:
                try:
                    set_path(point, k, v, file=file, strict=False)
                except InputError as e:
                    raise InputError(f"sweep over a missing field: {e.reason}", file=file, field=f"sweep.{k}") from None
                if k in ("model", "hardware"):
                    point = _resolve_names(point, file)
            params = dict(chosen)
            try:
                scenario = build_scenario(point, file)
            except InputError as e:
                if e.field in params and e.reason.startswith(("unknown field", "not a parameter")):
                    raise InputError(
                        f"sweep over a missing field ({e.reason})", file=file, field=f"sweep.{e.field}"
                    ) from None
                raise
            points.append((params, scenario))
    return points
