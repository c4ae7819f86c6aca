"""Fit per-operation cost models to measurements, and report how well they fit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares


@dataclass(frozen=True)
class LatencyBandwidthFit:
    """t(size) = latency_s + size / rate (rate in size units per second)."""

    latency_s: float
    rate_per_s: float
    mean_rel_error: float
    max_rel_error: float

    def __call__(self, size: np.ndarray | float) -> np.ndarray | float:
        return self.latency_s + np.asarray(size, dtype=float) / self.rate_per_s


def fit_latency_bandwidth(sizes: np.ndarray, seconds: np.ndarray) -> LatencyBandwidthFit:
    """Least squares on relative error, so small (latency-bound) and large (bandwidth-
    bound) sizes weigh alike; latency >= 0, rate > 0."""
    x = np.asarray(sizes, dtype=float)
    t = np.asarray(seconds, dtype=float)
    if x.shape != t.shape or x.size < 2:
        raise ValueError("need at least two (size, time) pairs")
    big = x >= np.quantile(x, 0.5)
    slope0 = np.polyfit(x[big], t[big], 1)[0] if big.sum() >= 2 else (t[-1] / x[-1])
    slope0 = max(slope0, 1e-30)
    lat0 = max(float(np.min(t)) * 0.5, 0.0)

    def resid(p: np.ndarray) -> np.ndarray:
        return (p[0] + x * p[1] - t) / t

    sol = least_squares(
        resid,
        x0=[lat0, slope0],
        bounds=([0.0, 1e-30], [np.inf, np.inf]),
        x_scale=[max(lat0, 1e-6), slope0],
        method="trf",
    )
    lat, slope = float(sol.x[0]), float(sol.x[1])
    rel = np.abs(resid(sol.x))
    return LatencyBandwidthFit(lat, 1.0 / slope, float(rel.mean()), float(rel.max()))


def rel_errors(pred: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
    r = np.abs(np.asarray(pred, dtype=float) - seconds) / np.asarray(seconds, dtype=float)
    return float(r.mean()), float(r.max())


def table_points(
    sizes: np.ndarray, seconds: np.ndarray, rate_monotone: bool = False
) -> tuple[list[float], list[float]]:
    """A monotone piecewise-linear table over the measured grid: duplicates merged (median),
    and times made non-decreasing in size (a larger op never costs less: noise otherwise).
    With ``rate_monotone`` (PCIe copies), the rate may not fall as sizes grow either: a
    point slower per byte than a smaller one is capped at the smaller one's rate. A copy's
    fixed cost only amortises with size; a point that breaks this caught a slow window (on
    the H100 VM one calibration timed 16 MiB pinned H2D copies at 35 GB/s, between 4 and
    64 MiB at 50 and 55, while the real runs' copies of that size ran at full rate)."""
    x = np.asarray(sizes, dtype=float)
    t = np.asarray(seconds, dtype=float)
    order = np.argsort(x)
    x, t = x[order], t[order]
    ux = np.unique(x)
    ut = np.array([np.median(t[x == v]) for v in ux])
    if rate_monotone:
        for i in range(1, len(ux)):
            ut[i] = min(ut[i], ut[i - 1] * ux[i] / ux[i - 1])
    ut = np.maximum.accumulate(ut)
    return [float(v) for v in ux], [float(v) for v in ut]
