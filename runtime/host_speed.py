"""How fast a measured run's host was, against the simulator's host for the same steps.

On a shared cloud host the issuing thread's speed is a per-process draw: the lent H100's
vCPUs each switch between two speeds about 1.7x apart over seconds
(a CPU placement probe, in git history), and the same host-bound ALISA run took 14-22 ms a
step from one process to the next. A simulated step that misses a measured one may then
miss because the model is wrong, or because that process's host ran slower or faster
than the calibration's. ``host_factor`` tells them apart: per decode step that both
traces cover, the host's own time (its work, its waits taken off) measured over
simulated, the median over the steps. ``alisa validate --host-conditioned`` re-times the
same plans with the profile's host costs scaled by it (``HostIssue.scaled``); what error
remains is the model's, not the host's draw.

Own time, real trace (``runtime/executor.py``'s spans): a step's host cycle, from its
selection's issue (``select``) to the end of its ``end``, less its waits (``wait
selection``, ``throttle``, and the fetch's ``before gather`` and ``before copy``), less
what tracing itself added to the step (its events and clocks: ``tracing_cost_s``).
Simulated trace (``sim/engine.py``): the Host lane's spans (``step``, ``round trip``,
``issue``, ``flush``) plus the CPU lane's ``gather`` (the issuing thread gathers inline).
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

WAITS = frozenset({"wait selection", "throttle", "before gather", "before copy"})
SIM_OWN = frozenset({("Host", "step"), ("Host", "round trip"), ("Host", "issue"), ("Host", "flush"), ("CPU", "gather")})


def _step_times(steps_csv: Path) -> dict[int, float]:
    with open(steps_csv, newline="") as f:
        return {int(r["step"]): float(r["time_s"]) for r in csv.DictReader(f) if int(r["step"]) >= 0}


def _kind(name: str) -> str:
    """'issue L3' -> 'issue'."""
    return name.rsplit(" L", 1)[0] if " L" in name else name


def _events(trace: Path) -> tuple[list[dict[str, Any]], dict[int, str]]:
    raw = json.loads(trace.read_text())
    events = raw["traceEvents"] if isinstance(raw, dict) else raw
    lanes = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    return [e for e in events if e.get("ph") == "X"], lanes


def tracing_cost_s(step_s: dict[int, float], traced: set[int], window: int = 3) -> dict[int, float]:
    """What tracing added to each traced step: its time less the median of the untraced
    steps within ``window`` of it (never below zero; on the lent H100 traced steps ran a
    median 5% longer). A traced step with no untraced neighbour (the run's first steps are
    traced one after another) gets the median of the others' costs."""
    cost: dict[int, float] = {}
    for s in traced:
        near = [step_s[k] for k in range(s - window, s + window + 1) if k in step_s and k not in traced]
        if near and s in step_s:
            cost[s] = max(0.0, step_s[s] - statistics.median(near))
    fill = statistics.median(cost.values()) if cost else 0.0
    return {s: cost.get(s, fill) for s in traced}


def real_host_own_s(trace: Path, step_s: dict[int, float] | None = None) -> dict[int, float]:
    """Per traced decode step of a real run: the host's own seconds. With the run's step
    times (``step_s``), less what tracing added to the step (``tracing_cost_s``): the
    traced steps' events and host clocks are host work the untraced steps do not do."""
    events, lanes = _events(trace)
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    waits: dict[int, float] = defaultdict(float)
    for e in events:
        step = e.get("args", {}).get("step")
        lane, kind = lanes.get(e["tid"]), _kind(e["name"])
        if step is None or step < 0 or lane not in ("Host", "CPU"):
            continue
        if kind in WAITS:
            waits[step] += e["dur"]
        elif lane == "Host" and kind == "select":
            first[step] = e["ts"]
        elif lane == "Host" and kind == "end":
            last[step] = e["ts"] + e["dur"]
    own = {s: 1e-6 * (last[s] - first[s] - waits[s]) for s in first if s in last and last[s] > first[s]}
    if step_s:
        extra = tracing_cost_s(step_s, set(own))
        own = {s: max(0.0, v - extra[s]) for s, v in own.items()}
    return own


def sim_host_own_s(trace: Path) -> dict[int, float]:
    """Per decode step of a simulated run: the modelled host's own seconds."""
    events, lanes = _events(trace)
    own: dict[int, float] = defaultdict(float)
    for e in events:
        step = e.get("args", {}).get("step")
        if step is None or step < 0:
            continue
        if (lanes.get(e["tid"]), _kind(e["name"])) in SIM_OWN:
            own[step] += 1e-6 * e["dur"]
    return dict(own)


def host_factor(real_runs: list[Path], sim_trace: Path) -> dict[str, Any] | None:
    """Measured over simulated host own time per step: per real run (a folder with its
    ``trace.json`` and ``steps.csv``), the median over the decode steps both traces have;
    ``factor`` is the median over the runs. None where no step is in both."""
    sim = sim_host_own_s(sim_trace)
    per_run = []
    for run in real_runs:
        real = real_host_own_s(run / "trace.json", _step_times(run / "steps.csv"))
        ratios = [real[s] / sim[s] for s in real if sim.get(s, 0.0) > 0]
        if ratios:
            per_run.append(statistics.median(ratios))
    if not per_run:
        return None
    return {"factor": statistics.median(per_run), "per_run": per_run}
