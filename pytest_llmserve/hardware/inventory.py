"""What GPUs this process may use, read through NVML so that no CUDA context is ever created."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .skus import marketed_gb


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One GPU as NVML reports it; `index` is the physical NVML index (PCI bus order)."""

    index: int
    name: str
    memory_mib: int
    compute_capability: tuple[int, int]
    uuid: str | None = None  # "GPU-…" from NVML; None for fake inventories

    @property
    def memory_gb(self) -> int:
        """The marketed size in GB ("80" for the 81,559 MiB an H100 reports)."""
        return marketed_gb(self.memory_mib)

    def describe(self) -> str:
        major, minor = self.compute_capability
        return f"{self.name} ({self.memory_gb} GB, cc {major}.{minor})"


@dataclass(frozen=True, slots=True)
class Inventory:
    """The GPUs visible to this process, in CUDA ordinal order, plus where the facts came from."""

    gpus: tuple[GpuInfo, ...]
    cpu_cores: int
    driver: str | None
    source: str  # "nvml", "nvml (CUDA_VISIBLE_DEVICES=…)", "fake:<spec>" or "none (reason)"

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def groups(self) -> list[tuple[GpuInfo, int]]:
        """Identical GPUs (name, size, cc) folded together, first one of each kept, in order."""
        seen: dict[tuple[str, int, tuple[int, int]], list[Any]] = {}
        for gpu in self.gpus:
            key = (gpu.name, gpu.memory_gb, gpu.compute_capability)
            if key in seen:
                seen[key][1] += 1
            else:
                seen[key] = [gpu, 1]
        return [(gpu, n) for gpu, n in seen.values()]

    def summary(self) -> str:
        """One line for a report header: '2x NVIDIA H100 80GB HBM3 (80 GB, cc 9.0); driver …; via nvml'."""
        if not self.gpus:
            return f"no GPU, {self.cpu_cores} CPU cores; {self.source}"
        parts = ", ".join(f"{n}x {gpu.describe()}" for gpu, n in self.groups())
        driver = f"; driver {self.driver}" if self.driver else ""
        return f"{parts}{driver}; via {self.source}"


def cpu_core_count() -> int:
    """Cores this process may run on (affinity), which is what a CI container actually grants."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def cpu_only(reason: str) -> Inventory:
    """An inventory with no GPU; `reason` says why (e.g. the NVML error)."""
    return Inventory(gpus=(), cpu_cores=cpu_core_count(), driver=None, source=f"none ({reason})")


def detect_inventory(environ: Mapping[str, str] | None = None) -> Inventory:
    """Read the GPUs through NVML, restricted and ordered by CUDA_VISIBLE_DEVICES; never raises.

    Uses nvidia-ml-py (`pynvml`) only: importing torch or calling cudaGetDeviceCount would create
    a CUDA context in the pytest process and hold memory on GPUs the servers need.
    """
    environ = os.environ if environ is None else environ
    try:
        import pynvml
    except ImportError:
        return cpu_only("nvidia-ml-py is not installed: pip install nvidia-ml-py")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # no driver, no libnvidia-ml.so, or a driver/library mismatch
        return cpu_only(f"nvmlInit failed: {_text(exc)}")
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = tuple(_read_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount()))
    except pynvml.NVMLError as exc:
        return cpu_only(f"NVML query failed: {_text(exc)}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return Inventory(gpus=gpus, cpu_cores=cpu_core_count(), driver=driver, source="nvml")
    selected, note = select_visible(gpus, visible)
    return Inventory(gpus=selected, cpu_cores=cpu_core_count(), driver=driver, source=f"nvml ({note})")


def _read_gpu(nvml: Any, index: int) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    return GpuInfo(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // (1024 * 1024),
        compute_capability=(int(major), int(minor)),
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
    )


def _text(value: object) -> str:
    # Older pynvml releases return bytes; nvidia-ml-py >= 11.515 returns str.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def select_visible(gpus: Sequence[GpuInfo], value: str) -> tuple[tuple[GpuInfo, ...], str]:
    """Apply CUDA_VISIBLE_DEVICES to NVML's physical list, the way the CUDA runtime would.

    NVML indices are physical and ignore CUDA_VISIBLE_DEVICES, so without this the inventory
    would show GPUs that the servers started from this process cannot see. CUDA's rules, followed
    here: entries are comma-separated integers or GPU UUIDs (a unique prefix such as "GPU-8a1f"
    suffices); the visible devices are enumerated in the order listed; at the first invalid or
    repeated entry enumeration stops and later entries are ignored; an empty value hides all GPUs.
    Integer entries are matched against NVML's PCI-bus order, which is CUDA's order when
    CUDA_DEVICE_ORDER=PCI_BUS_ID and, in practice, on nodes of identical GPUs (vLLM assumes the
    same); UUIDs are unambiguous, so slices from `gpu_slice_for_worker` use them. MIG instances
    ("MIG-…") are not inventoried: enumeration stops there and the note says so.
    Returns the visible GPUs in CUDA ordinal order and a note for `Inventory.source`.
    """
    note = f"CUDA_VISIBLE_DEVICES={value!r}"
    chosen: list[GpuInfo] = []
    if value.strip() == "":
        return (), f"{note} hides all GPUs"
    for raw in value.split(","):
        entry = raw.strip()
        gpu, why = _resolve_entry(gpus, entry)
        if gpu is not None and gpu in chosen:
            gpu, why = None, "is repeated"
        if gpu is None:
            note += f"; entry {entry!r} {why}, so it and later entries are ignored (as CUDA does)"
            break
        chosen.append(gpu)
    return tuple(chosen), f"{note} selects {len(chosen)} of {len(gpus)}"


def _resolve_entry(gpus: Sequence[GpuInfo], entry: str) -> tuple[GpuInfo | None, str]:
    if entry.lstrip("+-").isdigit():
        index = int(entry)
        found = [g for g in gpus if g.index == index]
        return (found[0], "") if found else (None, "names no GPU")
    if entry.upper().startswith("MIG-"):
        return None, "is a MIG instance, which is not inventoried"
    if entry.upper().startswith("GPU-"):
        found = [g for g in gpus if g.uuid and g.uuid.lower().startswith(entry.lower())]
        if len(found) == 1:
            return found[0], ""
        return None, "matches no GPU UUID" if not found else "matches several GPU UUIDs"
    return None, "is neither an index nor a GPU UUID"
