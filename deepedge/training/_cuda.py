"""The worker's training device: ``training.device`` resolved against what this torch sees, and
on a GPU torch's caching allocator capped so the LC apps keep their memory
(``torch.cuda.set_per_process_memory_fraction``; the arithmetic is ``deepedge.devices``)."""

from __future__ import annotations

import sys

import torch

from deepedge.devices import DeviceMemory, jetson_memory, memory_fraction, read_meminfo, resolve_device

__all__ = ["device_memory", "limit_memory", "training_device"]


def training_device(setting: str, lc_reserve_bytes: int) -> torch.device:
    """The device this worker trains on; on a GPU, its memory limited first (:func:`limit_memory`).
    Raises ``DeviceError`` for a device this board does not have, or no memory above the reserve."""
    available = torch.cuda.is_available()
    device = torch.device(resolve_device(setting, available, torch.cuda.device_count() if available else 0))
    if device.type == "cuda":
        limit_memory(device, lc_reserve_bytes)
    return device


def device_memory(device: torch.device) -> DeviceMemory:
    """Total and free memory of a GPU for this worker. A discrete GPU: ``cudaMemGetInfo`` (what
    NVML reports as free, every process's use counted). A Jetson's integrated GPU: the board's RAM,
    ``MemAvailable`` (``cudaMemGetInfo`` on Tegra leaves out what the kernel could reclaim)."""
    props = torch.cuda.get_device_properties(device)
    if bool(getattr(props, "is_integrated", False)):
        return jetson_memory(read_meminfo(), total=int(props.total_memory))
    free, _ = torch.cuda.mem_get_info(device)
    return DeviceMemory(total=int(props.total_memory), free=int(free))


def limit_memory(device: torch.device, reserve: int) -> float:
    """Cap this process's caching allocator on ``device`` at what it holds plus what is free,
    less ``reserve`` bytes for the LC apps; returns the fraction set. Measured after the CUDA
    context exists (its own memory is outside the allocator and the fraction)."""
    torch.cuda.set_device(device)
    torch.zeros(1, device=device)  # creates the context
    memory = device_memory(device)
    fraction = memory_fraction(memory, reserve, held=int(torch.cuda.memory_reserved(device)))
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    print(
        f"worker: {device} ({torch.cuda.get_device_name(device)}): allocator capped at {fraction:.3f} of "
        f"{memory.total / 2**20:.0f} MiB ({memory.free / 2**20:.0f} MiB free, {reserve / 2**20:.0f} MiB kept for "
        "the LC apps)",
        file=sys.stderr,
        flush=True,
    )
    return fraction
