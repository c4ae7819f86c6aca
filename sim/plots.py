"""PNG plots of a run: memory over time with phase bands, and step time over the run."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .engine import EngineResult

PHASE_COLORS = {"prefill": "#dddddd", "I": "#d8ecd8", "II": "#fbe7c6", "III": "#f6cccc"}


def _phase_spans(er: EngineResult) -> list[tuple[str, float, float]]:
    spans: list[tuple[str, float, float]] = []
    for r in er.steps:
        if spans and spans[-1][0] == r.phase:
            spans[-1] = (r.phase, spans[-1][1], r.end_s)
        else:
            spans.append((r.phase, r.start_s, r.end_s))
    return spans


def png_bytes(fig: plt.Figure) -> bytes:
    """Render and close a figure (every PNG the project writes goes through here)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def memory_plot(er: EngineResult, title: str, gpu_cap: float, cpu_cap: float) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 4))
    for phase, a, b in _phase_spans(er):
        ax.axvspan(a, b, color=PHASE_COLORS[phase], lw=0)
        if (b - a) < 0.03 * max(er.total_time_s, 1e-12):
            continue  # too narrow to label (phases can alternate near a boundary)
        ax.text((a + b) / 2, 1.0, phase, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    if er.memory_log:
        t = [m[0] for m in er.memory_log] + [er.total_time_s]
        g = [m[1] / 1e9 for m in er.memory_log]
        c = [m[2] / 1e9 for m in er.memory_log]
        ax.step(t, g + g[-1:], where="post", label="GPU in use")
        ax.step(t, c + c[-1:], where="post", label="host in use")
    ax.axhline(gpu_cap / 1e9, ls="--", lw=0.8, color="C0", label="GPU capacity")
    if cpu_cap / 1e9 < 4 * max([m[2] / 1e9 for m in er.memory_log] + [1]):
        ax.axhline(cpu_cap / 1e9, ls="--", lw=0.8, color="C1", label="host capacity")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("GB")
    ax.set_title(title, fontsize=10, pad=14)
    ax.legend(fontsize=8, loc="upper left")
    return png_bytes(fig)


def step_time_plot(er: EngineResult, title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 4))
    decode = [r for r in er.steps if r.phase != "prefill"]
    for phase in ("I", "II", "III"):
        xs = [r.step for r in decode if r.phase == phase]
        ys = [r.time_s * 1e3 for r in decode if r.phase == phase]
        if xs:
            ax.scatter(xs, ys, s=4, label=f"Phase {phase}", color={"I": "C2", "II": "C1", "III": "C3"}[phase])
    ax.set_xlabel("decode step")
    ax.set_ylabel("step time (ms)")
    ax.set_title(title, fontsize=10)
    if decode:
        ax.legend(fontsize=8)
    return png_bytes(fig)
