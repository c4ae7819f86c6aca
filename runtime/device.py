"""The device the real backend runs on: streams, timestamps, named allocations.

On a CUDA GPU there are three streams (compute, H2D, D2H) and times come from CUDA
events. On the CPU (tests, with TRITON_INTERPRET=1) everything runs in order on one
thread and times come from the host clock; the executor's logic is the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from alisa.sim.errors import InputError
from alisa.sim.hardware import GB


def require_cuda() -> torch.device:
    """The GPU, or a clear error (the CLI turns it into exit code 2)."""
    if not torch.cuda.is_available():
        raise InputError(
            "the real backend needs a CUDA GPU, and this machine has none that torch can use "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
            "run the simulator instead (--backend sim)",
            field="--backend",
        )
    return torch.device("cuda")


def present(t: torch.Tensor | None) -> torch.Tensor:
    """A buffer that one of a cache's options allocates (INT8 scales, kept layer inputs):
    callers reach it only where that option is on."""
    assert t is not None
    return t


def capture_graphs(
    dev: torch.device, bodies: dict[Any, Callable[[], None]], warmups: int = 2, shared_pool: bool = True
) -> dict[Any, torch.cuda.CUDAGraph]:
    """Each body as a CUDA graph: warmed up on a side stream first (cuBLAS picks its
    kernels, Triton compiles, the allocator settles), then captured, by default into one
    memory pool (safe where the graphs replay one at a time)."""
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(warmups):
            for body in bodies.values():
                body()
    torch.cuda.current_stream(dev).wait_stream(side)
    torch.cuda.synchronize(dev)
    pool = torch.cuda.graph_pool_handle() if shared_pool else None
    graphs: dict[Any, torch.cuda.CUDAGraph] = {}
    for key, body in bodies.items():
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            body()
        graphs[key] = g
    torch.cuda.synchronize(dev)
    return graphs


class GpuOutOfMemory(InputError):
    pass


@dataclass
class Device:
    dev: torch.device
    allocated: dict[str, int] = field(default_factory=dict)  # pool name -> bytes
    pinned_bytes: int = 0
    h2d_priority: int = 0  # CUDA stream priority of the copy stream: lower is higher, -1 the highest on an H100

    def __post_init__(self) -> None:
        self.cuda = self.dev.type == "cuda"
        if self.cuda:
            self.compute = torch.cuda.current_stream(self.dev)
            self.h2d = torch.cuda.Stream(self.dev, priority=self.h2d_priority)
            self.d2h = torch.cuda.Stream(self.dev)
        else:  # the CPU runs everything in order: no streams (every stream use is under `cuda`)
            self.compute = self.h2d = self.d2h = None  # type: ignore[assignment]

    # -- memory -----------------------------------------------------------------------
    def alloc(
        self, pool: str, shape: tuple[int, ...], dtype: torch.dtype, *, host: bool = False, fill: float | None = None
    ) -> torch.Tensor:
        """A named buffer: on the GPU, or in pinned host memory (host=True). Running out
        names the pool, its size and what is already held."""
        n = 1
        for s in shape:
            n *= s
        nbytes = n * torch.empty((), dtype=dtype).element_size()
        try:
            if host:
                t = torch.empty(shape, dtype=dtype, pin_memory=self.cuda)
                self.pinned_bytes += nbytes
            else:
                t = torch.empty(shape, dtype=dtype, device=self.dev)
            if fill is not None:
                t.fill_(fill)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if (
                not isinstance(e, torch.OutOfMemoryError)
                and "out of memory" not in str(e).lower()
                and "cudaHostAlloc" not in str(e)
            ):
                raise
            where = "pinned host memory" if host else "GPU memory"
            if host:
                held = f"{self.pinned_bytes / GB:.2f} GB pinned already"
            elif self.cuda:
                total = torch.cuda.get_device_properties(self.dev).total_memory
                held = f"{torch.cuda.memory_allocated(self.dev) / GB:.2f} GB allocated of {total / GB:.2f} GB"
            else:
                held = f"{self.gpu_bytes_now() / GB:.2f} GB allocated"
            raise GpuOutOfMemory(
                f"out of {where} allocating the {pool} ({nbytes / GB:.3f} GB; {held}); "
                "lower the batch, the sequence length or the GPU KV budget",
                field=pool,
            ) from None
        self.allocated[pool] = self.allocated.get(pool, 0) + nbytes
        return t

    def gpu_bytes_now(self) -> int:
        if self.cuda:
            # read once per step: torch.cuda.memory_allocated flattens the allocator's whole
            # statistics tree into a dict first (~0.3 ms on the H100 host, on the host's
            # critical path); the nested dict it starts from has the same number
            try:
                idx = self.dev.index if self.dev.index is not None else torch.cuda.current_device()
                return int(torch._C._cuda_memoryStats(idx)["allocated_bytes"]["all"]["current"])
            except (AttributeError, KeyError, TypeError):
                return torch.cuda.memory_allocated(self.dev)
        return sum(v for k, v in self.allocated.items() if not k.startswith("host"))

    def gpu_peak_bytes(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.dev)
        return self.gpu_bytes_now()

    # -- streams ------------------------------------------------------------------------
    def on(self, stream: Any) -> _OnStream:
        """Issue on ``stream`` inside the block, then on the compute stream again. A cheap
        ``torch.cuda.stream``: its device checks cost tens of microseconds a call on the
        H100 host (a step profile probe, since removed; see git history), and the fetch switches per layer."""
        return _OnStream(self, stream)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.dev)


class _OnStream:
    def __init__(self, device: Device, stream: Any) -> None:
        self.d, self.s = device, stream

    def __enter__(self) -> None:
        if self.d.cuda:
            torch.cuda.set_stream(self.s)

    def __exit__(self, *exc: object) -> None:
        if self.d.cuda:
            torch.cuda.set_stream(self.d.compute)


class Timeline:
    """Timestamps on one clock: CUDA events recorded on a stream (resolved at the end) or
    the host clock; host-side spans convert through ``origin_host``."""

    def __init__(self, device: Device) -> None:
        self.d = device
        device.sync()
        self.origin_host = time.perf_counter()
        self.origin = self.mark(device.compute)

    def mark(self, stream: Any = None) -> Any:
        if self.d.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record(stream)
            return e
        return time.perf_counter()

    def seconds(self, mark: Any) -> float:
        """Seconds from the origin (call after a sync)."""
        if self.d.cuda:
            return self.origin.elapsed_time(mark) / 1e3
        return mark - self.origin_host
