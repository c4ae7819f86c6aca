"""The host side of a fetch: a CPU worker gathers host-resident rows into pinned staging
and issues their H2D copy, layer by layer, while the GPU computes earlier layers.

The main thread submits one job per step (a function of the layer that gathers and
copies) and, before a layer needs its rows, waits for that layer. On CUDA the job runs
on a worker thread (torch releases the GIL inside its ops) and the compute stream waits
on the copy's event; on the CPU it runs inline when the layer is waited for.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .device import Device


@dataclass
class LayerFetch:
    """What a job did for one layer: bytes copied, and times for the trace."""

    h2d_bytes: int = 0
    gather_s: tuple[float, float] | None = None     # host clock
    copy_marks: tuple[Any, Any] | None = None       # H2D stream marks
    widths: tuple[int, int] = (0, 0)                # rows per sequence fetched as KV, as x


Job = Callable[[int], LayerFetch]


class HostFetcher:
    def __init__(self, device: Device, num_layers: int) -> None:
        self.d = device
        self.L = num_layers
        self.ready = [threading.Event() for _ in range(num_layers)]
        self.results: list[LayerFetch | None] = [None] * num_layers
        self.done = [torch.cuda.Event() for _ in range(num_layers)] if device.cuda else []
        # the compute stream has landed layer l's rows, so its GPU staging may be refilled
        self.consumed_flag = [threading.Event() for _ in range(num_layers)]
        self.consumed_evt = [torch.cuda.Event() for _ in range(num_layers)] if device.cuda else []
        self.after: Any = None
        self.timeout_s = 60.0
        self.job: Job | None = None
        self.error: BaseException | None = None
        self.q: queue.Queue[Job | None] = queue.Queue()
        self.thread: threading.Thread | None = None
        if device.cuda:
            self.dev_index = device.dev.index if device.dev.index is not None else torch.cuda.current_device()
            self.threads = torch.get_num_threads()  # OpenMP's thread count is per calling thread
            self.thread = threading.Thread(target=self._loop, name="alisa-host-fetch", daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        try:
            torch.cuda.set_device(self.dev_index)
            torch.set_num_threads(self.threads)
        except BaseException as e:  # noqa: BLE001 - surfaced in wait()
            self.error = e
        while True:
            job = self.q.get()
            if job is None:
                return
            try:
                self.d.h2d.synchronize()          # last step's copies are out of the pinned staging
                if self.after is not None:
                    self.after.synchronize()      # write-through copies have reached the host
            except BaseException as e:  # noqa: BLE001
                self.error = e
            for l in range(self.L):
                try:
                    if self.error is None:
                        with torch.cuda.stream(self.d.h2d):
                            self.results[l] = job(l)
                            self.done[l].record(self.d.h2d)
                except BaseException as e:  # noqa: BLE001 - surfaced in wait()
                    self.error = e
                self.ready[l].set()

    def submit(self, job: Job, after: Any = None) -> None:
        """Start a step's job; `after` is an event the host rows it reads were written by."""
        self.after = after
        for e in self.ready + self.consumed_flag:
            e.clear()
        self.results = [None] * self.L
        if self.thread is not None:
            self.q.put(job)
        else:
            self.job = job

    def wait(self, layer: int) -> LayerFetch:
        """Block until the layer's rows are on their way; the compute stream waits for them."""
        if self.thread is None:
            assert self.job is not None
            self.results[layer] = self.job(layer)
            return self.results[layer]  # type: ignore[return-value]
        waited = 0.0
        while not self.ready[layer].wait(timeout=1.0):
            waited += 1.0
            if not self.thread.is_alive() or waited >= self.timeout_s:
                raise self.error or RuntimeError(
                    f"host fetch of layer {layer} did not finish in {waited:.0f} s "
                    f"(worker alive: {self.thread.is_alive()})")
        if self.error is not None:
            raise self.error
        self.d.compute.wait_event(self.done[layer])
        return self.results[layer]  # type: ignore[return-value]

    # -- called from the job (worker side) and the main thread ---------------------------------
    def before_gather(self, layer: int) -> None:
        """Pinned staging of this parity is free once layer - 2's copy has finished."""
        if self.thread is not None and layer >= 2:
            self.done[layer - 2].synchronize()

    def before_copy(self, layer: int) -> None:
        """GPU staging of this parity is free once the compute stream has landed layer - 2."""
        if self.thread is not None and layer >= 2:
            if not self.consumed_flag[layer - 2].wait(timeout=self.timeout_s):
                raise RuntimeError(f"layer {layer - 2}'s fetched rows were never consumed")
            self.d.h2d.wait_event(self.consumed_evt[layer - 2])

    def consumed(self, layer: int) -> None:
        if self.thread is not None:
            self.consumed_evt[layer].record(self.d.compute)
            self.consumed_flag[layer].set()

    def close(self) -> None:
        if self.thread is not None:
            self.q.put(None)
            self.thread.join(timeout=10)
