"""Design-space search: the best configuration for a fixed model, hardware and workload.

The knobs the user marks free (policy, batch size, GPU KV budget, KV sparsity, INT8,
recompute, FlexGen's placement, any scenario field) are searched by Optuna's TPE sampler:
it handles integer, continuous and categorical knobs in one space, knobs that exist only
for some policies (define-by-run: ``policy.kv_sparsity`` is asked only when the policy
has it), and constraints (``Trial.set_constraint``), and its ask/tell interface lets a batch
of trials run at once on the sweep engines (process pool or Ray). scipy's optimisers
need a continuous or a purely integer box and cannot branch on a categorical choice.

Trials are evaluated like sweep points and journalled in ``OUT/points`` (a re-run reuses
them). The search writes every trial (``trials.csv``), the Pareto front of throughput
against per-token latency over the feasible trials (``pareto.csv``, ``pareto.png``), the
best point (``best.json``) and its full scenario (``winner.yaml``, ready for ``alisa run``).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .atomic import write_folder
from .errors import InputError
from .scenario import POLICY_CLASSES, build_scenario, set_path
from .sweep import evaluate_points, make_points, read_point, write_point

Kind = Literal["int", "float", "choice", "bool"]
OBJECTIVES: dict[str, Literal["maximize", "minimize"]] = {"throughput": "maximize", "token_latency": "minimize"}
# constraint metric -> (result field, scale to the metric's unit)
METRICS: dict[str, tuple[str, float]] = {
    "peak_gpu_gb": ("peak_gpu_bytes", 1e-9),
    "peak_host_gb": ("peak_cpu_bytes", 1e-9),
    "token_latency_ms": ("token_latency_s", 1e3),
    "throughput": ("throughput_tokens_per_s", 1.0),
}


@dataclass(frozen=True)
class Knob:
    path: str
    kind: Kind
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log)
        if self.kind == "bool":
            return trial.suggest_categorical(self.path, [False, True])
        # optuna's categorical values must be plain scalars: choose an index, keep the value
        i = trial.suggest_categorical(self.path, list(range(len(self.choices))))
        return self.choices[i]


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: Literal["<=", ">="]
    value: float

    def violation(self, result: dict[str, Any]) -> float:
        """<= 0 when met (optuna's convention), else by how much it is missed."""
        key, scale = METRICS[self.metric]
        got = float(result[key]) * scale
        return got - self.value if self.op == "<=" else self.value - got

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


@dataclass
class SearchSpec:
    objective: str = "throughput"
    trials: int = 48
    knobs: list[Knob] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)


def parse_knob(path: str, spec: Any, where: str) -> Knob:
    """A knob from YAML ({int: [lo, hi], log: true} | {float: [lo, hi]} | {choice: [...]} |
    bool) or from the command line (int:lo:hi[:log] | float:lo:hi[:log] | choice:a,b | bool)."""
    if isinstance(spec, str):
        head, _, rest = spec.partition(":")
        parts = rest.split(":") if rest else []
        if head in ("int", "float") and len(parts) in (2, 3):
            spec = {head: parts[:2], "log": len(parts) == 3 and parts[2] == "log"}
        elif head == "choice" and parts:
            spec = {"choice": [yaml.safe_load(v) for v in rest.split(",")]}
        elif head == "bool" and not parts:
            spec = "bool"
        else:
            raise InputError(
                f"'{spec}' is not a knob: int:LOW:HIGH[:log], float:LOW:HIGH[:log], choice:A,B,... or bool",
                file=where,
                field=path,
            )
    if spec == "bool" or spec == {"bool": True}:
        return Knob(path, "bool")
    if not isinstance(spec, dict):
        raise InputError(
            "a knob is a mapping such as {int: [8, 128]}, {float: [0.5, 0.95]}, {choice: [...]}", file=where, field=path
        )
    log = bool(spec.get("log", False))
    for kind in ("int", "float"):
        if kind in spec:
            bounds = spec[kind]
            try:
                lo, hi = (int(b) if kind == "int" else float(b) for b in bounds)
            except (TypeError, ValueError):
                raise InputError(f"{kind} bounds must be two numbers, got {bounds!r}", file=where, field=path) from None
            if not lo < hi or (log and lo <= 0):
                raise InputError(
                    f"bounds {lo}..{hi} must rise{' and be positive (log)' if log else ''}", file=where, field=path
                )
            return Knob(path, kind, float(lo), float(hi), log)
    if "choice" in spec:
        values = spec["choice"]
        if not isinstance(values, list) or not values:
            raise InputError("choice needs a non-empty list", file=where, field=path)
        if path == "policy":
            values = [{"name": v} if isinstance(v, str) else v for v in values]
        return Knob(path, "choice", choices=tuple(values))
    raise InputError("a knob needs one of int, float, choice or bool", file=where, field=path)


def parse_constraint(expr: str) -> Constraint:
    for op in ("<=", ">="):
        if op in expr:
            metric, _, value = expr.partition(op)
            metric = metric.strip()
            if metric not in METRICS:
                raise InputError(f"unknown metric '{metric}'; known: {', '.join(METRICS)}", field="--constraint")
            try:
                return Constraint(metric, op, float(value))
            except ValueError:
                raise InputError(f"'{value.strip()}' is not a number", field="--constraint") from None
    raise InputError(f"'{expr}' is not METRIC<=VALUE or METRIC>=VALUE", field="--constraint")


def spec_from(
    data: dict[str, Any], file: str, free: list[str], constraints: list[str], objective: str | None, trials: int | None
) -> SearchSpec:
    """The scenario's ``search:`` section, with the command line's additions on top."""
    sec = data.get("search") or {}
    if not isinstance(sec, dict):
        raise InputError("search must be a mapping (objective, trials, free, constraints)", file=file, field="search")
    unknown = set(sec) - {"objective", "trials", "free", "constraints"}
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(sorted(unknown))}", file=file, field="search")
    knobs = {k: parse_knob(k, v, file) for k, v in (sec.get("free") or {}).items()}
    for expr in free:
        path, eq, spec = expr.partition("=")
        if not eq:
            raise InputError(f"'{expr}' is not PATH=SPEC", field="--free")
        knobs[path.strip()] = parse_knob(path.strip(), spec.strip(), "--free")
    if not knobs:
        raise InputError(
            "nothing to search: mark knobs free (--free PATH=SPEC or search.free)", file=file, field="search.free"
        )
    cons = [parse_constraint(c) for c in (sec.get("constraints") or [])] + [parse_constraint(c) for c in constraints]
    obj = objective or sec.get("objective", "throughput")
    if obj not in OBJECTIVES:
        raise InputError(f"unknown objective '{obj}'; known: {', '.join(OBJECTIVES)}", field="--objective")
    n = trials if trials is not None else int(sec.get("trials", 48))
    if n < 1:
        raise InputError(f"must be at least 1, got {n}", field="--trials")
    # the policy first: which policy.* knobs exist depends on it
    ordered = sorted(knobs.values(), key=lambda k: k.path != "policy")
    return SearchSpec(obj, n, ordered, cons)


@dataclass
class Trial:
    number: int
    values: dict[str, Any]
    scenario: Any = None
    result: dict[str, Any] | None = None
    invalid: str = ""

    @property
    def feasible(self) -> bool:
        return self.result is not None and "error" not in self.result and not self.result["oom"]


@dataclass
class SearchReport:
    trials: list[Trial]
    best: Trial | None
    pareto: list[Trial]
    objective: str
    constraints: list[Constraint]


def _applies(path: str, policy: dict[str, Any]) -> bool:
    """A policy.* knob exists only for policies that have that field."""
    if not path.startswith("policy.") or path.count(".") != 1:
        return True
    cls = POLICY_CLASSES.get(str(policy.get("name")))
    return cls is not None and path.split(".", 1)[1] in cls.model_fields


def _configure(base: dict[str, Any], file: str, spec: SearchSpec, trial: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial's scenario data (define-by-run) and the knob values it drew."""
    data = copy.deepcopy(base)
    data["sweep"] = None
    data["search"] = None
    values: dict[str, Any] = {}
    for k in spec.knobs:
        if k.path == "policy":
            v = k.suggest(trial)
            data["policy"] = copy.deepcopy(v)
        elif not _applies(k.path, data["policy"]):
            continue
        else:
            v = k.suggest(trial)
            set_path(data, k.path, v, file=file, strict=False)
        values[k.path] = v
    return data, values


def _score(result: dict[str, Any], objective: str) -> float:
    return float(result["throughput_tokens_per_s"] if objective == "throughput" else result["token_latency_s"])


def pareto_front(trials: list[Trial]) -> list[Trial]:
    """Feasible trials no other feasible trial beats on both throughput (higher) and
    per-token latency (lower), by throughput."""
    ok = [t for t in trials if t.feasible and t.result is not None and t.result["throughput_tokens_per_s"] > 0]
    front = []
    for t in ok:
        assert t.result is not None
        x, y = t.result["throughput_tokens_per_s"], t.result["token_latency_s"]
        dominated = any(
            o.result is not None
            and o.result["throughput_tokens_per_s"] >= x
            and o.result["token_latency_s"] <= y
            and (o.result["throughput_tokens_per_s"] > x or o.result["token_latency_s"] < y)
            for o in ok
        )
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: t.result["throughput_tokens_per_s"] if t.result else 0.0)


def run_search(
    base: dict[str, Any],
    file: str,
    spec: SearchSpec,
    out: Path,
    seed: int = 0,
    engine: str = "pool",
    jobs: int | None = None,
    address: str | None = None,
    exact: bool = False,
    progress: Callable[[int, bool], object] | None = None,
) -> SearchReport:
    from .deps import require

    require("optuna", purpose="alisa search")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = OBJECTIVES[spec.objective]
    cons = spec.constraints

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, spec.trials // 4)))
    study = optuna.create_study(direction=direction, sampler=sampler)
    batch = max(2, 2 * (jobs or 1))
    trials: list[Trial] = []
    while len(trials) < spec.trials:
        asked = [study.ask() for _ in range(min(batch, spec.trials - len(trials)))]
        made: list[tuple[Any, Trial]] = []
        for ot in asked:
            data, values = _configure(base, file, spec, ot)
            t = Trial(ot.number, values)
            try:
                t.scenario = build_scenario(data, file)
            except InputError as e:  # a configuration the scenario rules refuse (e.g. a budget above the GPU)
                t.invalid = e.message()
            made.append((ot, t))
        points = make_points([({}, t.scenario) for _, t in made if t.scenario is not None], exact)
        ready = {p.index: read_point(out, p) for p in points}
        todo = [p for p in points if ready[p.index] is None]
        for i, res in evaluate_points(todo, engine, jobs, address, exact):
            if res is not None:
                ready[i] = res
                write_point(out, points[i], res, wall_s=res.get("sim_wall_s"))
        evaluated = iter(points)
        for ot, t in made:
            if t.scenario is not None:
                t.result = ready[next(evaluated).index]
            ok = t.feasible
            if ok and t.result is not None:
                for c in cons:  # the sampler favours trials that meet them (<= 0)
                    ot.set_constraint(str(c), c.violation(t.result))
                study.tell(ot, _score(t.result, spec.objective))
                ok = all(c.violation(t.result) <= 0 for c in cons)
            else:
                study.tell(ot, state=optuna.trial.TrialState.FAIL)
            trials.append(t)
            if progress:
                progress(1, not ok)
    feasible = [
        t for t in trials if t.feasible and t.result is not None and all(c.violation(t.result) <= 0 for c in cons)
    ]
    sign = 1.0 if direction == "maximize" else -1.0
    best = max(feasible, key=lambda t: sign * _score(t.result, spec.objective) if t.result else -math.inf, default=None)
    report = SearchReport(trials, best, pareto_front(feasible), spec.objective, cons)
    write_report(out, report, base.get("name", "search"))
    return report


# -- outputs -----------------------------------------------------------------------------------


def _row(t: Trial, cons: list[Constraint]) -> dict[str, Any]:
    r = t.result or {}
    ok = t.feasible and all(c.violation(r) <= 0 for c in cons)
    return {
        "trial": t.number,
        **{f"knob:{k}": (v.get("name") if isinstance(v, dict) else v) for k, v in t.values.items()},
        "throughput_tokens_per_s": r.get("throughput_tokens_per_s", ""),
        "token_latency_ms": 1e3 * r["token_latency_s"] if "token_latency_s" in r else "",
        "peak_gpu_gb": r["peak_gpu_bytes"] / 1e9 if "peak_gpu_bytes" in r else "",
        "peak_host_gb": r["peak_cpu_bytes"] / 1e9 if "peak_cpu_bytes" in r else "",
        "feasible": ok,
        "why_not": t.invalid
        or r.get("error", "")
        or (r.get("oom_reason") or "" if r.get("oom") else "")
        or ", ".join(str(c) for c in cons if r and c.violation(r) > 0),
    }


def _csv(rows: list[dict[str, Any]]) -> bytes:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def winner_yaml(t: Trial, name: str) -> str:
    data = t.scenario.model_dump(mode="json", exclude={"sweep", "search"})
    data["name"] = f"{name}-best"
    head = "# alisa search's best point: the full scenario it simulated (alisa run this file)\n"
    return head + yaml.safe_dump(data, sort_keys=False)


def write_report(out: Path, rep: SearchReport, name: str) -> None:
    files = {
        "trials.csv": _csv([_row(t, rep.constraints) for t in rep.trials]),
        "pareto.csv": _csv([_row(t, rep.constraints) for t in rep.pareto]) if rep.pareto else b"",
    }
    if rep.best is not None and rep.best.result is not None:
        best = {
            "trial": rep.best.number,
            "objective": rep.objective,
            "knobs": rep.best.values,
            "throughput_tokens_per_s": rep.best.result["throughput_tokens_per_s"],
            "token_latency_ms": 1e3 * rep.best.result["token_latency_s"],
            "peak_gpu_gb": rep.best.result["peak_gpu_bytes"] / 1e9,
            "peak_host_gb": rep.best.result["peak_cpu_bytes"] / 1e9,
            "constraints": [str(c) for c in rep.constraints],
        }
        files["best.json"] = json.dumps(best, indent=2).encode()
        files["winner.yaml"] = winner_yaml(rep.best, name).encode()
    else:  # a re-run into the same folder must not leave an earlier run's winner behind
        for stale in ("best.json", "winner.yaml"):
            (out / stale).unlink(missing_ok=True)
    png = pareto_plot(rep)
    if png:
        files["pareto.png"] = png
    write_folder(out, files)


def pareto_plot(rep: SearchReport) -> bytes | None:
    ran = [t for t in rep.trials if t.feasible and t.result is not None and t.result["throughput_tokens_per_s"] > 0]
    if not ran:
        return None
    import matplotlib.pyplot as plt

    from .plots import png_bytes

    def xy(ts: list[Trial]) -> tuple[list[float], list[float]]:
        rs = [t.result for t in ts if t.result is not None]
        return [1e3 * r["token_latency_s"] for r in rs], [r["throughput_tokens_per_s"] for r in rs]

    meets = [t for t in ran if t.result is not None and all(c.violation(t.result) <= 0 for c in rep.constraints)]
    misses = [t for t in ran if t not in meets]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter(*xy(meets), s=14, alpha=0.6, label="trials meeting the constraints")
    if misses:
        ax.scatter(*xy(misses), s=14, marker="x", color="0.6", label="trials missing a constraint")
    ax.plot(*xy(rep.pareto), "o-", color="C3", label="Pareto front")
    if rep.best is not None:
        ax.scatter(*xy([rep.best]), marker="*", s=160, color="k", label="best", zorder=3)
    lat = xy(ran)[0]
    if max(lat) > 10 * min(lat):
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("per-token latency (ms)")
    ax.set_ylabel("throughput (tokens/s)")
    ax.set_title(f"alisa search: {len(rep.trials)} trials, objective {rep.objective}", fontsize=10)
    ax.legend(fontsize=8)
    return png_bytes(fig)
