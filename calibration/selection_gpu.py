"""GPU time of the real backend's spilling selection, timed over a grid of shapes.

A spilling ALISA step starts with one CUDA graph (``runtime/spill_select.py``) that picks
every layer's and sequence's tokens and places them in slots, in the run's fixed shapes:
all N positions, C + 1 slots, a global part of K. The host waits for it (and for the copy
of its host part) before it can gather, so its time is on every step's critical path and
grows with the run: L x B x N elements at least. Here the graph is built on caches of
the real shapes but with one KV head of 16 channels (the selection never reads the KV)
and replayed; ``SelectionCost`` is a non-negative least-squares fit of its time over
``SelectionShape.terms()``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

REPEATS = 20
# (layers, batch, positions N, slots C, global part K): the validation matrix's shapes
# (L 32; B 8, 32; N 1024, 1536; C about 0.35 N; K 0.16 N), the host probes' (L 8, N 544)
# and shapes that pull the terms apart
GRID: tuple[tuple[int, int, int, int, int], ...] = (
    (8, 8, 544, 320, 87),
    (8, 32, 544, 320, 87),
    (32, 8, 544, 320, 87),
    (32, 32, 544, 320, 87),
    (32, 8, 1024, 360, 164),
    (32, 32, 1024, 360, 164),
    (32, 8, 1536, 540, 246),
    (32, 32, 1536, 540, 246),
    (32, 32, 1536, 320, 246),
    (32, 32, 1536, 1200, 246),
    (32, 32, 1536, 540, 60),
    (32, 32, 4096, 540, 246),
    (16, 16, 2048, 900, 400),
    (32, 8, 4096, 1500, 650),
)


def time_selection(
    layers: int, batch: int, positions: int, slots: int, global_max: int, repeats: int = REPEATS
) -> float:
    """Seconds per replay of the selection graph of these shapes, with its host part's
    copy: the mean over back-to-back replays, each waited for as the executor waits."""
    import torch

    from alisa.runtime.device import Device
    from alisa.runtime.slot_cache import SlotCache

    a_max = global_max + max(1, global_max // 4)
    if slots < a_max:
        raise ValueError(f"a selection of shape C={slots} < a={a_max}: the cache must hold a step's attended tokens")
    d = Device(torch.device("cuda"))
    c = SlotCache(
        d,
        layers=layers,
        batch=batch,
        max_tokens=positions,
        capacity=slots,
        kv_heads=1,
        head_dim=16,
        hidden=16,
        int8=False,
        write_through=True,
        keep_inputs=True,
        swa=True,
        history=4,
        ring_tokens=a_max,
        max_fetch=a_max,
        act_dtype=torch.float16,
        attend_max=a_max,
        selection="plan",
        global_max=global_max,
    )
    sel = c.selector
    assert sel is not None
    sel.capture()
    # a step late in the run: n near N, a full global part; half the misses recomputed
    n = positions - 1
    m = [global_max // 2] * layers
    gen = torch.Generator(device="cuda").manual_seed(0)
    c.score.copy_(torch.rand(c.score.shape, generator=gen, device="cuda"))

    def step(i: int) -> None:
        sel.set_inputs(n, a_max - global_max, global_max, a_max, i + 1, 0, 0.5, m, [x // 2 for x in m])

    return replay_seconds(sel, step, repeats)


def replay_seconds(sel: Any, set_step: Any = None, repeats: int = REPEATS) -> float:
    """Mean seconds from issuing a ``SpillSelector``'s graph to its host part being in host
    memory, over replays each waited for (as the executor waits); ``set_step(i)`` sets the
    step's inputs before replay i (None: the inputs already set)."""
    import torch

    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    total = 0.0
    for i in range(repeats + 3):
        if set_step is not None:
            set_step(i)
        t0.record()
        sel.run()
        sel.ready.synchronize()
        t1.record()
        t1.synchronize()
        if i >= 3:  # the first replays warm caches and clocks
            total += t0.elapsed_time(t1) / 1e3
    return total / repeats


def measure_selection(grid: tuple[tuple[int, int, int, int, int], ...] = GRID) -> list[dict]:
    """Raw rows: seconds per selection graph at each shape of the grid."""
    from alisa.runtime.run import release_gpu

    rows = []
    for L, B, N, C, K in grid:
        rows.append(
            {
                "op": "selection_graph",
                "size": float(L * B * N),
                "layers": L,
                "batch": B,
                "positions": N,
                "slots": C,
                "global_max": K,
                "seconds": time_selection(L, B, N, C, K),
            }
        )
        release_gpu()  # the shape's caches went with time_selection's frame
    return rows


def selection_section(rows: list[dict]) -> dict[str, Any] | None:
    """The profile's ``selection``: fixed + ns per term, non-negative least squares on
    relative error (small and large shapes weigh alike)."""
    from scipy.optimize import nnls

    from alisa.sim.costs import SelectionShape

    pts = [r for r in rows if r["op"] == "selection_graph"]
    if len(pts) < 4:
        return None
    t = np.array([r["seconds"] for r in pts])
    X = np.array(
        [
            [
                1e-6,
                *(
                    v * 1e-9
                    for v in SelectionShape(
                        r["layers"], r["batch"], r["positions"], r["slots"], r["global_max"]
                    ).terms()
                ),
            ]
            for r in pts
        ]
    )
    coef, _ = nnls(X / t[:, None], np.ones_like(t))
    rel = np.abs(X @ coef - t) / t
    return {
        "fixed_us": round(float(coef[0]), 3),
        "per_position_ns": round(float(coef[1]), 6),
        "per_slot_ns": round(float(coef[2]), 6),
        "per_global_ns": round(float(coef[3]), 6),
        "fit_rel_error": round(float(rel.mean()), 4),
    }
