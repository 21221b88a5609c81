"""Peak memory of one training run (not of the whole process), for `TrainResult.peak_memory_mb`.

On CUDA the allocator's peak counter is reset when the run starts. On CPU the kernel's own peak
(`ru_maxrss`) covers the process's lifetime and cannot be reset - a loop process that evaluated a
model before tuning would report the evaluation's peak - so a daemon thread samples the resident
set size while the run lasts and keeps the largest value. A sample is one read of
`/proc/self/statm` (microseconds) every `interval` seconds; training steps last far longer, so
the peaks of forward and backward passes are seen. Where /proc is missing (macOS) psutil is
used if installed, else the figure falls back to the process-lifetime peak and says so.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_reader() -> Any:
    """A function returning the current RSS in bytes, or None where none is available."""
    try:
        with open("/proc/self/statm") as f:
            f.read()

        def statm() -> int:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * _PAGE

        return statm
    except OSError:
        pass
    try:
        import psutil

        proc = psutil.Process()
        return lambda: proc.memory_info().rss
    except ImportError:
        return None


class PeakMemory:
    """Context manager measuring the peak memory of what runs inside it.

    `kind` says what `peak_mb` is: "cuda_max_allocated" (the CUDA allocator's peak on `device`),
    "rss_sampled" (the largest sampled resident set size), or "rss_process_lifetime" (fallback).
    """

    def __init__(self, device: str, interval: float = 0.05) -> None:
        self.device, self.interval = device, interval
        self.cuda = device.startswith("cuda")
        self._read = None if self.cuda else _rss_reader()
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.cuda:
            self.kind = "cuda_max_allocated"
        else:
            self.kind = "rss_sampled" if self._read else "rss_process_lifetime"

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        elif self._read is not None:
            self._peak = self._read()
            self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        read = self._read
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, read())

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._read())

    @property
    def peak_mb(self) -> float:
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self._read is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak / (2**20 if sys.platform == "darwin" else 1024)  # bytes there, else KiB
        return self._peak / 2**20
