"""Selection traces and the selection-churn model that drives Phase II traffic.

A trace records, for each decode step and layer of a real model, which tokens SWA
selected and how many of its *global* (non-window) selections are new since the
previous step. Window tokens are always GPU-resident, so only global churn moves bytes.

File format (``.npz``, written by ``alisa accuracy --trace-out`` and readable by hand):

===================  ==========  ==================================================
key                  shape       meaning
===================  ==========  ==================================================
format               ()          the string ``alisa-selection-trace/1``
context_len          [S]         tokens cached when step s was decoded
window               [S]         local-window tokens attended at step s
global_selected      [S, L]      global tokens selected (summed over KV heads)
global_changed       [S, L]      of those, not selected at step s-1
indices_offsets      [S*L+1]     optional CSR offsets into ``indices`` (row = s*L + l)
indices              [N]         optional selected token ids (union over KV heads)
===================  ==========  ==================================================

Without a trace the simulator uses a constant churn (``selection_churn``, our choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

TRACE_FORMAT = "alisa-selection-trace/1"
_REQUIRED = ("format", "context_len", "window", "global_selected", "global_changed")


@dataclass(frozen=True)
class SelectionTrace:
    context_len: np.ndarray  # [S]
    window: np.ndarray  # [S]
    global_selected: np.ndarray  # [S, L]
    global_changed: np.ndarray  # [S, L]
    indices_offsets: np.ndarray | None = None
    indices: np.ndarray | None = None

    @property
    def num_steps(self) -> int:
        return int(self.context_len.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.global_selected.shape[1])

    def churn(self) -> np.ndarray:
        """[S, L] share of the global selection that is new at each step (0 where none)."""
        sel = self.global_selected.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(sel > 0, self.global_changed / np.maximum(sel, 1), 0.0)
        return np.clip(c, 0.0, 1.0)

    def selected(self, step: int, layer: int) -> np.ndarray:
        if self.indices is None or self.indices_offsets is None:
            raise ValueError("this trace holds counts only, no indices")
        row = step * self.num_layers + layer
        return self.indices[self.indices_offsets[row] : self.indices_offsets[row + 1]]


def write_trace(path: str | Path, trace: SelectionTrace) -> None:
    """Write atomically (temp file then rename)."""
    from .atomic import atomic_path

    arrays: dict[str, Any] = dict(
        format=np.array(TRACE_FORMAT),
        context_len=trace.context_len,
        window=trace.window,
        global_selected=trace.global_selected,
        global_changed=trace.global_changed,
    )
    if trace.indices is not None:
        arrays.update(indices_offsets=trace.indices_offsets, indices=trace.indices)
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def read_trace(path: str | Path) -> SelectionTrace:
    p = Path(path)
    if not p.is_file():
        raise InputError("selection trace file does not exist", file=str(p), field="policy.selection_trace")
    try:
        data = np.load(p, allow_pickle=False)
    except Exception as e:  # numpy raises several types for a non-npz file
        raise InputError(f"not a selection trace (.npz): {e}", file=str(p)) from None
    with data:
        for k in _REQUIRED:
            if k not in data:
                raise InputError("missing array in selection trace", file=str(p), field=k)
        if str(data["format"]) != TRACE_FORMAT:
            raise InputError(
                f"unsupported trace format '{data['format']}', expected '{TRACE_FORMAT}'", file=str(p), field="format"
            )
        sel, chg = data["global_selected"], data["global_changed"]
        ctx, win = data["context_len"], data["window"]
        if sel.ndim != 2 or sel.shape != chg.shape or ctx.shape != (sel.shape[0],) or win.shape != ctx.shape:
            raise InputError("inconsistent array shapes", file=str(p), field="global_selected")
        if sel.shape[0] == 0:
            raise InputError("trace has no steps", file=str(p), field="context_len")
        if (chg > sel).any() or (chg < 0).any():
            raise InputError("global_changed must lie in [0, global_selected]", file=str(p), field="global_changed")
        offs = data.get("indices_offsets", None)
        idx = data.get("indices", None)
        return SelectionTrace(
            ctx.astype(np.int64), win.astype(np.int64), sel.astype(np.int64), chg.astype(np.int64), offs, idx
        )


class ChurnModel:
    """Share of the global selection replaced at (step, layer): a constant or a trace."""

    def __init__(self, constant: float, trace: SelectionTrace | None, num_layers: int) -> None:
        self.constant = constant
        self.num_layers = num_layers
        self._table: np.ndarray | None = None
        if trace is not None:
            c = trace.churn()
            # map the model's layers onto the trace's layers by relative depth
            src = np.minimum((np.arange(num_layers) * trace.num_layers) // num_layers, trace.num_layers - 1)
            self._table = c[:, src]

    @property
    def uniform(self) -> bool:
        return self._table is None

    def at(self, step: int) -> np.ndarray:
        """[L] churn for decode step `step` (the trace cycles if the run is longer)."""
        if self._table is None:
            return np.full(self.num_layers, self.constant)
        return self._table[step % self._table.shape[0]]
