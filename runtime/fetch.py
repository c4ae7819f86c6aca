"""The host side of a fetch: gather host-resident rows into pinned staging and issue their
H2D copy, layer by layer, while the GPU computes earlier layers.

The main thread submits one job per step (a function of the layer that gathers and
copies). Two ways to run it:

* ``inline`` (the default): the main thread runs layer l + 2's job after issuing layer
  l's GPU work (``run_to``), so gathers overlap GPU compute with no second thread;
* ``thread``: a worker thread runs the jobs while the main thread issues layers. Both
  threads then trade the interpreter lock at every torch call: on the H100 host the
  worker's per-layer overhead was 150-250 us beyond its gathers and copies
  (a fetch probe, in git history), which is why inline is the default.

Before a layer needs its rows the main thread waits for that layer's job; the compute
stream waits on its copy's event. On the CPU (tests) jobs run inline, in order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .device import Device


@dataclass
class LayerFetch:
    """What a job did for one layer: bytes copied, and times for the trace."""

    h2d_bytes: int = 0
    gather_s: tuple[float, float] | None = None  # host clock
    copy_marks: tuple[Any, Any] | None = None  # H2D stream marks
    widths: tuple[int, int] = (0, 0)  # rows per sequence fetched as KV, as x
    # host clock: job start, gather start/end, copies issued from/to (waits sit between)
    host_marks: tuple[float, float, float, float, float] | None = None


Job = Callable[[int], LayerFetch]


def fetch_threads_default() -> int:
    """CPU threads the fetch worker gathers with unless told (calibration uses the same)."""
    return max(1, min(8, torch.get_num_threads() // 2))


class HostFetcher:
    def __init__(self, device: Device, num_layers: int, threads: int | None = None, mode: str = "inline") -> None:
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
        self.q: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.ran = -1  # inline: the last layer whose job has run
        self.started = False
        self.threads = threads or fetch_threads_default()
        if device.cuda and mode == "thread":
            self.dev_index = device.dev.index if device.dev.index is not None else torch.cuda.current_device()
            self.thread = threading.Thread(target=self._loop, name="alisa-host-fetch", daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        try:
            torch.cuda.set_device(self.dev_index)
            torch.set_num_threads(self.threads)
        except BaseException as e:
            self.error = e
        while True:
            item = self.q.get()
            if item is None:
                return
            kind, fn = item
            if kind == "call":
                try:
                    if self.error is None:
                        fn()
                except BaseException as e:
                    self.error = e
                continue
            try:
                self._start_step()
            except BaseException as e:
                self.error = e
            for l in range(self.L):
                try:
                    if self.error is None:
                        self._run_layer(fn, l)
                except BaseException as e:
                    self.error = e
                self.ready[l].set()

    def _start_step(self) -> None:
        """Before a step's first gather (CUDA)."""
        self.d.h2d.synchronize()  # last step's copies are out of the pinned staging
        if self.after is not None:
            self.after.synchronize()  # the prefill's write-through has reached the host

    def _run_layer(self, job: Job, l: int) -> None:
        """Layer l's gather and copy, issued on the H2D stream; ``done[l]`` marks the copy."""
        if self.d.cuda:
            with self.d.on(self.d.h2d):
                self.results[l] = job(l)
                self.done[l].record(self.d.h2d)
        else:
            self.results[l] = job(l)

    def run_later(self, fn: Callable[[], None]) -> None:
        """Run fn on the worker after the jobs already submitted (inline: now)."""
        if self.thread is None:
            fn()
        else:
            self.q.put(("call", fn))

    def submit(self, job: Job, after: Any = None) -> None:
        """Start a step's job; `after` is an event the host rows it reads were written by."""
        self.after = after
        for e in self.ready + self.consumed_flag:
            e.clear()
        self.results = [None] * self.L
        if self.thread is not None:
            self.q.put(("job", job))
        else:
            self.job, self.ran, self.started = job, -1, False

    def run_to(self, layer: int) -> None:
        """Inline mode: run the step's job for every layer up to ``layer`` not yet run (the
        main thread gathers the next layers' rows between issuing this one's GPU work)."""
        if self.thread is not None or self.job is None:
            return
        layer = min(layer, self.L - 1)
        if self.ran >= layer:
            return
        if self.d.cuda and not self.started:
            self._start_step()
        self.started = True
        while self.ran < layer:
            self._run_layer(self.job, self.ran + 1)
            self.ran += 1

    def wait(self, layer: int) -> LayerFetch:
        """Block until the layer's rows are on their way; the compute stream waits for them."""
        if self.thread is None:
            assert self.job is not None
            self.run_to(layer)
            if self.d.cuda:
                self.d.compute.wait_event(self.done[layer])
            return self.results[layer]  # type: ignore[return-value]
        waited = 0.0
        while not self.ready[layer].wait(timeout=1.0):
            waited += 1.0
            if not self.thread.is_alive() or waited >= self.timeout_s:
                raise self.error or RuntimeError(
                    f"host fetch of layer {layer} did not finish in {waited:.0f} s "
                    f"(worker alive: {self.thread.is_alive()})"
                )
        if self.error is not None:
            raise self.error
        self.d.compute.wait_event(self.done[layer])
        return self.results[layer]  # type: ignore[return-value]

    # -- called from the job (worker side) and the main thread ---------------------------------
    def before_gather(self, layer: int) -> None:
        """Pinned staging of this parity is free once layer - 2's copy has finished."""
        if self.d.cuda and layer >= 2:
            self.done[layer - 2].synchronize()

    def before_copy(self, layer: int) -> None:
        """GPU staging of this parity is free once the compute stream has landed layer - 2."""
        if self.d.cuda and layer >= 2:
            if not self.consumed_flag[layer - 2].wait(timeout=self.timeout_s):
                raise RuntimeError(f"layer {layer - 2}'s fetched rows were never consumed")
            self.d.h2d.wait_event(self.consumed_evt[layer - 2])

    def consumed(self, layer: int) -> None:
        if self.d.cuda:
            self.consumed_evt[layer].record(self.d.compute)
            self.consumed_flag[layer].set()

    def close(self) -> None:
        if self.thread is not None:
            self.q.put(None)
            self.thread.join(timeout=10)
