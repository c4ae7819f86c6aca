"""Host time to issue the real backend's work, measured by running it.

Each probe is a model of the validation matrix's width (hidden 4096: KV rows of 16 KiB
and inputs x of 8 KiB, as LLaMA-7B and OPT-6.7B) with a small FFN and vocabulary, run by
``alisa.runtime``'s executor on the matrix's workload shape (prompt 512; ALISA at s = 0.8
with a 320-token cache and churn 0.6) at two depths and two batch sizes. The host's time
per decode step is per-step + depth x per-layer: the depths separate those, the batch
sizes give each part as fixed + per sequence, and differences between probes separate the
parts (``HostIssue``'s fields): dense layers, SWA's importance update, a spilling run's
write-through and landing, recompute, a FlexGen-like host prefix. The fetch's own time
per fetching layer beyond its gathers comes from the spill probe, and its copy issue per
further part from the recompute probe's layers, which fetch both KV rows and inputs x
(recompute ratio 0.5). Depth 32 is the depth of the models the matrix runs.

The width matters: the host's own costs grow when its gathers stream megabytes through
host memory. With hidden 512 the probes put the copy issue at 19-36 us a layer, while the
real runs' traces (LLaMA-7B, OPT-6.7B) showed 59-86 us for the same code.

What a probe measures is the host's *own* time. The GPU often sets a probe's pace, so a
clock around the step would time the host waiting for it: the run-ahead throttle, the
copy that last used a pinned buffer, the selection's host part. Every CUDA synchronize
during a probe is timed (``timed_syncs``); what one spends beyond a synchronize whose work
is already done (``sync_floor_s``, measured before the run) is a wait, and comes off
(``waits_in``). A step's time is its cycle, from its start to the next step's, so the run
loop's bookkeeping and the step's end (LM head, write-through, the host copy's store)
count: the real runs these fields model are host-bound, and there all of it lies on the
critical path. The selection graph's launch comes off too: the profile's ``selection``
times it from issue to host part (``selection_gpu``), and so does the spilling step's store
of its write-through rows into the host copy, which is timed apart and fitted by bytes
(``store_cost``).

A process keeps its host speed, and processes differ (the same probe up to 2x apart), so
the probe set runs in ``HOST_PROCESSES`` fresh processes and each raw field is the median.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .layer_gpu import CACHES

DEPTHS = (8, 32)
BATCHES = (8, 32)
HOST_PROCESSES = 3  # the probe set runs in this many fresh processes (median per field)
PROMPT = 512
WIDTH = 4096


def _scenario(
    layers: int,
    policy: dict[str, Any],
    hardware: dict[str, Any],
    gen: int,
    batch: int = 8,
):
    from alisa.sim.scenario import build_scenario

    # the matrix's width (KV rows of 16 KiB, inputs x of 8 KiB, as LLaMA-7B and OPT-6.7B),
    # so the probes gather and copy the bytes the real runs do; a small FFN and vocabulary
    # keep their GPU time and memory down (the host's own time does not depend on them)
    model = dict(
        name=f"probe-{layers}l",
        family="llama",
        num_layers=layers,
        hidden_size=WIDTH,
        num_heads=WIDTH // 128,
        num_kv_heads=WIDTH // 128,
        head_dim=128,
        ffn_dim=1024,
        vocab_size=1024,
        activation="silu",
        norm="rmsnorm",
        max_positions=4096,
    )
    return build_scenario(
        {
            "name": "host-probe",
            "model": model,
            "hardware": hardware,
            "workload": {"batch_size": batch, "prompt_len": PROMPT, "gen_len": gen},
            "policy": policy,
            "seed": 0,
        },
        "<calibration host probe>",
    )


def waits_in(a: float, b: float, syncs: list[tuple[float, float]], floor_s: float) -> float:
    """Seconds the host spent waiting inside [a, b]: each synchronize starting there, less
    what one costs when its work is already done (``floor_s``), which the host pays anyway.
    ``syncs`` are (start, end) host times in start order."""
    lo = bisect.bisect_left(syncs, (a, -math.inf))
    waited = 0.0
    for s0, s1 in syncs[lo:]:
        if s0 >= b:
            break
        waited += max(0.0, min(s1, b) - s0 - floor_s)
    return waited


def sync_floor_s(repeats: int = 200) -> float:
    """Median host seconds of a CUDA synchronize whose work is already done."""
    import torch

    e = torch.cuda.Event()
    e.record()
    e.synchronize()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        e.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


@contextlib.contextmanager
def timed_syncs() -> Iterator[list[tuple[float, float]]]:
    """Record (start, end) host times of every CUDA event and stream synchronize inside."""
    import torch

    spans: list[tuple[float, float]] = []
    saved = {cls: cls.synchronize for cls in (torch.cuda.Event, torch.cuda.Stream)}

    def timed(fn):
        def sync(self):
            t0 = time.perf_counter()
            try:
                return fn(self)
            finally:
                spans.append((t0, time.perf_counter()))

        return sync

    try:
        for cls, fn in saved.items():
            cls.synchronize = timed(fn)  # type: ignore[method-assign]
        yield spans
    finally:
        for cls, fn in saved.items():
            cls.synchronize = fn  # type: ignore[method-assign]


def record_calls(obj: Any, names: tuple[str, ...]) -> dict[str, list[tuple[float, float]]]:
    """Wrap obj's methods so each call's (start, end) host times are appended to the
    returned lists."""
    out: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for name in names:
        fn = getattr(obj, name)

        def wrap(*a, _fn=fn, _out=out[name], **kw):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                _out.append((t0, time.perf_counter()))

        setattr(obj, name, wrap)
    return out


@dataclass
class StepCycle:
    """One decode step as the probe saw it, host clock: the step's cycle [start, end) (to
    the next step's start), its fetch calls' spans (waits for and runs of the fetch jobs),
    its fetching layers' gathers (seconds, parts, bytes), its selection graph's launch
    spans, and its stores of write-through rows into the host copy (spans and bytes)."""

    start: float
    end: float
    fetch: list[tuple[float, float]] = field(default_factory=list)
    gathers: list[tuple[float, int, int]] = field(default_factory=list)
    launch: list[tuple[float, float]] = field(default_factory=list)
    flush: list[tuple[float, float, int]] = field(default_factory=list)  # start, end, bytes

    @property
    def gather_s(self) -> float:
        return sum(g for g, _, _ in self.gathers)


def own_in(spans: list[tuple[float, float]], syncs: list[tuple[float, float]], floor_s: float) -> float:
    """The host's own seconds over (start, end) spans: each span less its waits."""
    return sum(b - a - waits_in(a, b, syncs, floor_s) for a, b in spans)


def own_seconds(c: StepCycle, syncs: list[tuple[float, float]], floor_s: float) -> tuple[float, float]:
    """The host's own seconds in a step's cycle, and in its fetch calls (both without
    waits). The selection graph's launch is left out of the first: the profile's
    ``selection`` times it from issue to host part, launch included."""
    cycle = own_in([(c.start, c.end)], syncs, floor_s)
    return cycle - own_in(c.launch, syncs, floor_s), own_in(c.fetch, syncs, floor_s)


def _cycles(decode: list[tuple[float, float]], prefill: list[tuple[float, float]]) -> list[StepCycle]:
    """The timed run's decode steps as cycles: each from its start to the next step's
    (the last one to its own end). Steps before the last prefill (the executor's untimed
    rehearsal) are left out."""
    after = max((a for a, _ in prefill), default=-math.inf)
    starts = [(a, b) for a, b in decode if a > after]
    return [StepCycle(a, starts[i + 1][0] if i + 1 < len(starts) else b) for i, (a, b) in enumerate(starts)]


def _cycle_of(cycles: list[StepCycle], starts: list[float], t: float) -> StepCycle | None:
    """The cycle holding host time t (``starts``: the cycles' starts, in order)."""
    i = bisect.bisect_right(starts, t) - 1
    return cycles[i] if i >= 0 and t < cycles[i].end else None


def _host_per_step(sc) -> dict[str, float]:
    """One real run's medians per decode step. The host's own time (``own_seconds``: the
    cycle less its waits and the selection graph's launch), of which in the fetch
    (``fetch_own_seconds``: the gathers, index lists, copy issue, stream waits) and in
    storing write-through rows into the host copy (``flush_own_seconds``, of
    ``flush_bytes``), and the fetch's own time per fetching layer beyond its gathers
    (``fetch_layer_own_seconds``);
    the copy issue by the layer's parts (``copy_issue_{1,2}part_seconds``). For the record,
    the clock around the step (``seconds``), its time in the fetch (``wait_seconds``), the
    selection graph's seconds from issue to host part, replayed after the run
    (``selection_seconds``), and the synchronize floor. The prefill's host seconds."""
    from alisa.runtime.executor import RealExecutor
    from alisa.runtime.run import release_gpu

    floor = sync_floor_s()
    ex = RealExecutor(sc)
    calls = record_calls(ex, ("_decode", "_prefill"))
    fetch_calls: list[tuple[float, float]] = []  # outermost calls only: wait runs run_to inline
    # per fetching layer: job start, gather seconds, parts, copy issue seconds, bytes
    fetched: list[tuple[float, float, int, float, int]] = []
    if ex.fetcher is not None:
        inner, inner_run = ex.fetcher.wait, ex.fetcher.run_to
        depth = [0]

        def timed(fn, *a):
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    fetch_calls.append((t0, time.perf_counter()))

        def run_to(layer: int) -> None:
            timed(inner_run, layer)

        def wait(layer: int):
            f = timed(inner, layer)
            if f.host_marks is not None:
                m = f.host_marks
                fetched.append(
                    (m[0], m[2] - m[1], int(f.widths[0] > 0) + int(f.widths[1] > 0), m[4] - m[3], f.h2d_bytes)
                )
            return f

        # instruments this one executor's fetcher: its methods, timed
        ex.fetcher.wait, ex.fetcher.run_to = wait, run_to  # type: ignore[method-assign]
    selector = ex.slots.selector if ex.slots is not None else None
    launches = record_calls(selector, ("run",))["run"] if selector is not None else []
    # the write-through's store into the host copy (a closure the step hands the host),
    # timed apart: the simulator costs it by bytes (``flush_us``, ``flush_gbps``)
    flushes: list[tuple[float, float, int]] = []
    if ex.slots is not None and ex.slots.write_through:
        step_out = ex.slots.write_through_step

        def write_through_step(*a, **kw):
            nbytes, store = step_out(*a, **kw)

            def timed_store() -> None:
                t0 = time.perf_counter()
                store()
                flushes.append((t0, time.perf_counter(), nbytes))

            return nbytes, timed_store

        ex.slots.write_through_step = write_through_step  # type: ignore[method-assign]
    with timed_syncs() as syncs:
        ex.run()
    # a spilling run's selection graph: from issue to host part, which the simulator
    # times from the profile's ``selection`` (shape-dependent)
    selection_s = 0.0
    if selector is not None and selector.graph is not None:
        from .selection_gpu import replay_seconds

        selection_s = replay_seconds(selector)
    del ex, selector
    release_gpu()

    syncs.sort()
    cycles = _cycles(calls["_decode"], calls["_prefill"])
    starts = [c.start for c in cycles]
    for spans, put in (
        (fetch_calls, lambda c, s: c.fetch.append(s)),
        (launches, lambda c, s: c.launch.append(s)),
        (flushes, lambda c, s: c.flush.append(s)),
    ):
        for span in spans:
            c = _cycle_of(cycles, starts, span[0])
            if c is not None:
                put(c, span)
    copies: dict[int, list[float]] = {1: [], 2: []}  # copy issue seconds by the layer's parts
    for t, g, parts, copy_s, nbytes in fetched:
        c = _cycle_of(cycles, starts, t)
        if c is not None:
            c.gathers.append((g, parts, nbytes))
            if parts in copies:
                copies[parts].append(copy_s)
    steady = cycles[2:-1] or cycles  # the first steps warm up; the last has no successor
    gathers = [x for c in steady for x in c.gathers]
    own = [own_seconds(c, syncs, floor) for c in steady]
    per_layer = [(f - c.gather_s) / len(c.gathers) for c, (_, f) in zip(steady, own, strict=True) if c.gathers]

    def median(xs: list[float]) -> float:
        return statistics.median(xs) if xs else 0.0

    decode = [b - a for a, b in calls["_decode"]]
    out = {
        "own_seconds": median([o for o, _ in own]),
        "fetch_own_seconds": median([f for _, f in own]),
        "fetch_layer_own_seconds": median(per_layer),
        "sync_floor_seconds": floor,
        "seconds": median(decode[2:]),  # the first two are the executor's rehearsal
        "wait_seconds": median([sum(b - a for a, b in c.fetch) for c in steady]),
        "prefill_seconds": min(own_in([span], syncs, floor) for span in calls["_prefill"]),
        "selection_seconds": selection_s,
    }
    for parts, xs in copies.items():
        if xs:
            out[f"copy_issue_{parts}part_seconds"] = median(xs)
    if any(c.flush for c in steady):
        out["flush_own_seconds"] = median([own_in([(a, b) for a, b, _ in c.flush], syncs, floor) for c in steady])
        out["flush_bytes"] = median([sum(n for _, _, n in c.flush) for c in steady])
    if gathers:
        # means, not medians: the in-run gather fit is linear in parts and bytes
        n = len(gathers)
        out |= {
            "gather_layer_seconds": sum(g for g, _, _ in gathers) / n,
            "gather_parts": sum(p for _, p, _ in gathers) / n,
            "gather_bytes": sum(b for _, _, b in gathers) / n,
        }
    return out


PROBES: dict[str, dict[str, Any]] = {
    "dense": {"name": "dense-gpu"},
    "swa": {"name": "alisa", "kv_sparsity": 0.8, "gpu_kv_budget_tokens": 4096},
    "spill": {
        "name": "alisa",
        "kv_sparsity": 0.8,
        "gpu_kv_budget_tokens": 320,
        "recompute": False,
        "selection_churn": 0.6,
    },
    # half the misses recomputed: its layers fetch KV rows and inputs x (two parts each)
    "recompute": {
        "name": "alisa",
        "kv_sparsity": 0.8,
        "gpu_kv_budget_tokens": 320,
        "recompute": True,
        "recompute_ratio": 0.5,
        "selection_churn": 0.6,
    },
    "prefix": CACHES["prefix"],  # the FlexGen-like layout, as the layer probes run it
}


def probe_rows(hardware: dict[str, Any], gen: int = 32) -> list[dict]:
    """Raw rows of one set of probes, in this process: host seconds per decode step
    (median) and of the prefill, per probe, depth and batch size."""
    rows: list[dict] = []
    for probe, policy in PROBES.items():
        for B in BATCHES:
            for L in DEPTHS:
                r = _host_per_step(_scenario(L, policy, hardware, gen, B))
                rows.append({"op": f"host_issue:{probe}", "size": float(L), "layers": L, "batch": B, **r})
    return rows


def _probe_rows_in_child(hardware: dict[str, Any], gen: int) -> list[dict]:
    """``probe_rows`` in a fresh Python process."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="alisa-host-probe-") as tmp:
        hw, out = Path(tmp) / "hardware.json", Path(tmp) / "rows.json"
        hw.write_text(json.dumps(hardware, default=str))
        done = subprocess.run(
            [sys.executable, "-m", "alisa.calibration.host_issue", str(hw), str(out), str(gen)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"a host probe process failed (exit {done.returncode}): {done.stderr[-2000:]}")
        return json.loads(out.read_text())


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """One row per probe, depth and batch from several processes' rows: each numeric field
    the median over the processes that have it; ``processes`` says how many, and
    ``own_seconds_by_process`` keeps their spread."""
    keyed: dict[tuple[str, int, int], list[dict]] = {}
    for rows in runs:
        for r in rows:
            keyed.setdefault((r["op"], int(r["batch"]), int(r["layers"])), []).append(r)
    out: list[dict] = []
    for rs in keyed.values():
        row: dict[str, Any] = {}
        for k in dict.fromkeys(k for r in rs for k in r):
            vals = [r[k] for r in rs if k in r]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
            row[k] = statistics.median(vals) if numeric and k not in ("layers", "batch", "size") else vals[0]
        row["processes"] = len(rs)
        if all("own_seconds" in r for r in rs):
            row["own_seconds_by_process"] = [r["own_seconds"] for r in rs]
        out.append(row)
    return out


def measure_host_issue(hardware: dict[str, Any], gen: int = 32, processes: int = HOST_PROCESSES) -> list[dict]:
    """Raw rows of the host probes: the whole set run in ``processes`` fresh Python
    processes one after another, each field the median over them (one: in this process).
    A process keeps its host speed: the same probe ran up to 40% apart in two processes
    on one machine minutes apart, and the real runs spread as much (docs/validation.md),
    so one process's probes fit that process's host, not the machine's."""
    if processes <= 1:
        return probe_rows(hardware, gen)
    return median_rows([_probe_rows_in_child(hardware, gen) for _ in range(processes)])


def _section_at(by: dict[tuple[str, int], dict], a: int, b: int) -> dict[str, float]:
    """The host fields (microseconds) at one batch size, from its probes' rows by (probe,
    depth) at depths a < b."""
    fit: dict[str, tuple[float, float]] = {}  # probe -> (per step, per layer) seconds
    for p in PROBES:
        own = {L: _own_outside_fetch(by[p, L]) for L in (a, b)}
        per_layer = (own[b] - own[a]) / (b - a)
        fit[p] = (own[a] - a * per_layer, per_layer)
    pre = (by["dense", b]["prefill_seconds"] - by["dense", a]["prefill_seconds"]) / (b - a)
    return {
        "prefill_layer_us": pre * 1e6,
        "layer_us": fit["dense"][1] * 1e6,
        "importance_us": (fit["swa"][1] - fit["dense"][1]) * 1e6,
        "spill_layer_us": (fit["spill"][1] - fit["swa"][1]) * 1e6,
        "recompute_us": (fit["recompute"][1] - fit["spill"][1]) * 1e6,
        "prefix_us": (fit["prefix"][1] - fit["dense"][1]) * 1e6,
        "step_us": fit["dense"][0] * 1e6,
        "round_trip_us": (fit["spill"][0] - fit["swa"][0]) * 1e6,
        "fetch_layer_us": _fetch_layer_s(by["spill", b]) * 1e6,
        "fetch_part_us": _part_us(by["spill", b], by["recompute", b]),
    }


def _own_outside_fetch(row: dict) -> float:
    """A probe step's host seconds outside the fetch, which the simulator times as gathers
    plus ``fetch_layer_us``, and outside the write-through's store, which it times by bytes
    (``flush_us``, ``flush_gbps``; rows from before it was timed apart keep it). Rows
    from calibrations before the own-time accounting hold the clock around the step, less
    the fetch calls and the selection graph's seconds."""
    if "own_seconds" in row:
        return row["own_seconds"] - row["fetch_own_seconds"] - row.get("flush_own_seconds", 0.0)
    return row["seconds"] - row.get("wait_seconds", 0.0) - row.get("selection_seconds", 0.0)


def _fetch_layer_s(row: dict) -> float:
    """The fetch's host seconds per fetching layer beyond its gathers."""
    return row.get("fetch_layer_own_seconds", row.get("worker_layer_seconds", 0.0))


def _part_us(one: dict, two: dict) -> float:
    """A fetching layer's further part (its second gather's copy): the copy issue of the
    recompute probe's two-part layers (KV rows and inputs x) less the spill probe's
    one-part layers', timed on the host around the copies alone (the probes' waits for the
    GPU, which a narrow model's pace sets, stay out). Zero where either was not measured."""
    a, b = one.get("copy_issue_1part_seconds"), two.get("copy_issue_2part_seconds")
    return (b - a) * 1e6 if a is not None and b is not None else 0.0


def host_section(rows: list[dict]) -> dict[str, Any] | None:
    """The profile's ``host`` section from ``measure_host_issue``'s rows: each field as
    [fixed, per sequence] microseconds, a line through its values at the two batch sizes
    (rows without a batch, from older calibrations, give plain numbers)."""
    by_batch: dict[int, dict[tuple[str, int], dict]] = {}
    for r in rows:
        if r["op"].startswith("host_issue:"):
            by_batch.setdefault(int(r.get("batch", 0)), {})[(r["op"].split(":", 1)[1], int(r["layers"]))] = r
    at: dict[int, dict[str, float]] = {}
    for B, by in by_batch.items():
        depths = sorted({L for _, L in by})
        if len(depths) < 2 or any((p, L) not in by for p in PROBES for L in (depths[0], depths[-1])):
            continue
        at[B] = _section_at(by, depths[0], depths[-1])
    if not at:
        return None
    if len(at) == 1:
        (only,) = at.values()
        return {k: round(max(0.0, v), 2) for k, v in only.items()}
    b0, b1 = min(at), max(at)
    out: dict[str, Any] = {}
    for k in at[b0]:
        slope = (at[b1][k] - at[b0][k]) / (b1 - b0)
        out[k] = [round(at[b0][k] - b0 * slope, 2), round(slope, 3)]
    return out | in_run_gather(rows) | store_cost(rows)


def _fixed_and_rate(pts: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    """Non-negative least squares of seconds = count x fixed + bytes / rate over (count,
    bytes, seconds) points: (fixed microseconds, GB/s), or None where no rate fits."""
    if len(pts) < 2:
        return None
    import numpy as np
    from scipy.optimize import nnls

    a = np.array([[n, b / 1e9] for n, b, _ in pts])
    (fixed_s, s_per_gb), _ = nnls(a, np.array([t for _, _, t in pts]))
    return (float(fixed_s) * 1e6, 1.0 / float(s_per_gb)) if s_per_gb > 0 else None


def store_cost(rows: list[dict]) -> dict[str, float]:
    """The write-through's store into the host copy, fitted over the spilling probes as
    seconds = ``flush_us`` + bytes / ``flush_gbps`` per step. Empty where no probe timed
    it (older calibrations: their per-layer fields hold it)."""
    fit = _fixed_and_rate(
        [
            (1.0, r["flush_bytes"], r["flush_own_seconds"])
            for r in rows
            if r["op"].startswith("host_issue:") and r.get("flush_bytes")
        ]
    )
    return {} if fit is None else {"flush_us": round(fit[0], 2), "flush_gbps": round(fit[1], 3)}


def in_run_gather(rows: list[dict]) -> dict[str, float]:
    """The executor's own gathers in the spilling probes, fitted as seconds = parts x
    ``gather_part_us`` + bytes / ``gather_gbps`` (non-negative least squares over the
    probes' mean fetching layers). Empty where no probe recorded its gathers (older
    calibrations). The gather microbenchmark (``cpu_gather``) read 33-52 GB/s in three
    calibrations within 20 minutes while the real runs gathered at 22-38: in the executor the
    gathers share the host with the issue of GPU work and the write-through."""
    fit = _fixed_and_rate(
        [
            (r["gather_parts"], r["gather_bytes"], r["gather_layer_seconds"])
            for r in rows
            if r["op"].startswith("host_issue:") and r.get("gather_bytes")
        ]
    )
    return {} if fit is None else {"gather_part_us": round(fit[0], 2), "gather_gbps": round(fit[1], 3)}


if __name__ == "__main__":  # one process's probes: hardware JSON in, rows JSON out
    import json
    import sys
    from pathlib import Path

    _hw, _out, _gen = sys.argv[1:4]
    Path(_out).write_text(json.dumps(probe_rows(json.loads(Path(_hw).read_text()), int(_gen))))
