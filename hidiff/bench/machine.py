"""The machine under the figures: its name, waiting for the device, peak memory, other load."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import resource
import sys
from pathlib import Path
from typing import Any

import torch

BUSY_LOAD = 0.5
"""A 1-minute load average above this before a CPU run means something else is computing."""


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a timer around a call measures the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class PeakMemory:
    """Peak memory of a stretch of work: the device's allocator on a GPU, the process's RSS on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "VRAM" if device.type == "cuda" else "RSS"
        self._rss_reset = False

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # the kernel's peak-RSS mark (Linux), so each stretch gets its own peak
            Path("/proc/self/clear_refs").write_text("5")
            self._rss_reset = True
        except OSError:
            self._rss_reset = False

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self._rss_reset:
            match = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
            if match:
                return int(match.group(1)) * 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the lifetime peak
        return peak if sys.platform == "darwin" else peak * 1024


def load_average() -> float | None:
    """The 1-minute load average: on a small machine, other work skews every timing."""
    with contextlib.suppress(OSError, AttributeError):
        return round(os.getloadavg()[0], 2)
    return None


def describe(device: torch.device) -> dict[str, Any]:
    """The host and the device, for naming the machine next to the figures."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if match:
            cpu = match.group(1).strip()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = None
    with contextlib.suppress(OSError):
        match = re.search(r"MemTotal:\s+(\d+)\s+kB", Path("/proc/meminfo").read_text())
        if match:
            memory = round(int(match.group(1)) / 2**20, 1)
    info: dict[str, Any] = {"cpu": cpu, "cpus_usable": usable, "memory_gib": memory, "os": platform.platform()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def name(info: dict[str, Any], device: torch.device) -> str:
    """One line naming the machine."""
    host = f"{info['cpu']}, {info['cpus_usable']} CPUs, {info['memory_gib']} GiB"
    if "gpu" in info:
        return f"{info['gpu']} ({info['gpu_memory_gib']} GiB); host {host}"
    return f"{host} (device {device.type})"
