"""How fast a measured run's host was, against the simulator's host for the same steps.

On a shared cloud host the issuing thread's speed is a per-process draw: the lent H100's
vCPUs each switch between two speeds about 1.7x apart over seconds
(``benchmarks/debug/cpu_placement.py``), and the same host-bound ALISA run took 14-22 ms a
step from one process to the next. A simulated step that misses a measured one may then
miss because the model is wrong, or because that process's host ran slower or faster
than the calibration's. ``host_factor`` tells them apart: per decode step that both
traces cover, the host's own time (its work, its waits taken off) measured over
simulated, the median over the steps. ``alisa validate --host-conditioned`` re-times the
same plans with the profile's host costs scaled by it (``HostIssue.scaled``); what error
remains is the model's, not the host's draw.

Own time, real trace (``runtime/executor.py``'s spans): a step's host cycle, from its
selection's issue (``select``) to the end of its ``end``, less its waits (``wait
selection``, ``throttle``, and the fetch's ``before gather`` and ``before copy``).
Simulated trace (``sim/engine.py``): the Host lane's spans (``step``, ``round trip``,
``issue``, ``flush``) plus the CPU lane's ``gather`` (the issuing thread gathers inline).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

WAITS = frozenset({"wait selection", "throttle", "before gather", "before copy"})
SIM_OWN = frozenset({("Host", "step"), ("Host", "round trip"), ("Host", "issue"), ("Host", "flush"),
                     ("CPU", "gather")})


def _kind(name: str) -> str:
    """'issue L3' -> 'issue'."""
    return name.rsplit(" L", 1)[0] if " L" in name else name


def _events(trace: Path) -> tuple[list[dict[str, Any]], dict[int, str]]:
    raw = json.loads(trace.read_text())
    events = raw["traceEvents"] if isinstance(raw, dict) else raw
    lanes = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    return [e for e in events if e.get("ph") == "X"], lanes


def real_host_own_s(trace: Path) -> dict[int, float]:
    """Per traced decode step of a real run: the host's own seconds."""
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
    return {s: 1e-6 * (last[s] - first[s] - waits[s]) for s in first if s in last and last[s] > first[s]}


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


def host_factor(real_traces: list[Path], sim_trace: Path) -> dict[str, Any] | None:
    """Measured over simulated host own time per step: per run, the median over the decode
    steps both traces have; ``factor`` is the median over the runs. None where no step
    is in both (a run without spilled KV, whose host never gathers, still counts)."""
    sim = sim_host_own_s(sim_trace)
    per_run = []
    for t in real_traces:
        real = real_host_own_s(t)
        ratios = [real[s] / sim[s] for s in real if sim.get(s, 0.0) > 0]
        if ratios:
            per_run.append(statistics.median(ratios))
    if not per_run:
        return None
    return {"factor": statistics.median(per_run), "per_run": per_run}
