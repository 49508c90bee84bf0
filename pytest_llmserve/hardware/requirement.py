"""The `gpu` marker: validated arguments and a one-line reason when the machine falls short."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

from .inventory import GpuInfo, Inventory
from .skus import sku_of

MARKER = "@pytest.mark.gpu"
SIGNATURE = "gpu(sku=None, count=1, min_memory_gb=None, min_compute_capability=None)"
_KEYS = ("sku", "count", "min_memory_gb", "min_compute_capability")
_CC = re.compile(r"(\d+)(?:\.(\d))?")


@dataclass(frozen=True, slots=True)
class GpuRequirement:
    """At least `count` GPUs, each of one of the `sku`s, with enough memory and compute capability."""

    sku: tuple[str, ...] | None = None
    count: int = 1
    min_memory_gb: float | None = None
    min_compute_capability: tuple[int, int] | None = None

    @classmethod
    def from_marker_kwargs(cls, **kw: Any) -> GpuRequirement:
        """Validate marker keyword arguments; errors name the marker, key and value and show the signature."""
        for key, value in kw.items():
            if key not in _KEYS:
                close = difflib.get_close_matches(key, _KEYS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise _error(key, value, f"is not an argument{hint}")
        return cls(
            sku=_sku(kw["sku"]) if kw.get("sku") is not None else None,
            count=_count(kw.get("count", 1)),
            min_memory_gb=_memory(kw["min_memory_gb"]) if kw.get("min_memory_gb") is not None else None,
            min_compute_capability=(
                _capability(kw["min_compute_capability"])
                if kw.get("min_compute_capability") is not None
                else None
            ),
        )

    @classmethod
    def from_marker(cls, marker: Any) -> GpuRequirement:
        """From a pytest Mark; positional arguments are refused because their meaning would be a guess."""
        if marker.args:
            raise ValueError(
                f"{MARKER}{marker.args!r}: takes keyword arguments only, e.g. "
                f"gpu(sku='H100', count=2); signature: {SIGNATURE}"
            )
        return cls.from_marker_kwargs(**marker.kwargs)

    def matches(self, gpu: GpuInfo) -> bool:
        """Whether one GPU meets every per-GPU condition (sku, memory, compute capability)."""
        if self.sku is not None and not any(_sku_matches(s, gpu.name) for s in self.sku):
            return False
        if self.min_memory_gb is not None and gpu.memory_gb < self.min_memory_gb:
            return False
        if self.min_compute_capability is not None and gpu.compute_capability < self.min_compute_capability:
            return False
        return True

    def describe(self) -> str:
        """'2x GPU with sku H100, min 80 GB, compute capability >= 9.0'."""
        parts = []
        if self.sku is not None:
            parts.append("sku " + " or ".join(self.sku))
        if self.min_memory_gb is not None:
            parts.append(f"min {self.min_memory_gb:g} GB")
        if self.min_compute_capability is not None:
            parts.append("compute capability >= {}.{}".format(*self.min_compute_capability))
        return f"{self.count}x GPU" + (" with " + ", ".join(parts) if parts else "")

    def unmet_reason(self, inv: Inventory) -> str | None:
        """None when `inv` satisfies the requirement, else one line: what was required, what was found."""
        matching = [gpu for gpu in inv.gpus if self.matches(gpu)]
        if len(matching) >= self.count:
            return None
        if not inv.gpus:
            why = inv.source[len("none (") : -1] if inv.source.startswith("none (") else inv.source
            return f"requires {self.describe()}; found 0 GPUs ({why})"
        n = len(inv.gpus)
        found = f"found {n} GPU{'s' if n != 1 else ''}"
        if (self.sku, self.min_memory_gb, self.min_compute_capability) != (None, None, None):
            found += f", {len(matching)} matching"
        found += ": " + ", ".join(f"{k}x {gpu.describe()}" for gpu, k in inv.groups())
        if inv.source != "nvml":  # say when the list was restricted or made up
            found += f" [{inv.source}]"
        return f"requires {self.describe()}; {found}"


def _sku_matches(wanted: str, name: str) -> bool:
    # Substring of the NVML name ("H100" in "NVIDIA H100 80GB HBM3"), as TensorRT-LLM's
    # skip_device_not_contain does, or the label's short name ("h100pcie").
    return wanted.lower() in name.lower() or wanted.lower() == sku_of(name)


def _error(key: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{MARKER}: {key}={value!r} {why}; signature: {SIGNATURE}")


def _sku(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise _error("sku", value, "must be a GPU name part such as 'H100' or a list of them")
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise _error("sku", value, "must hold non-empty strings such as 'H100'")
    return tuple(item.strip() for item in items)


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _error("count", value, "must be an integer >= 1 (the number of GPUs)")
    return value


def _memory(value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise _error("min_memory_gb", value, "must be a number of GB > 0, e.g. 80 (per GPU)")
    return float(value)


def _capability(value: Any) -> tuple[int, int]:
    """'9.0', 9.0, 9 or (9, 0) → (9, 0); minor versions are single digits, as on every CUDA GPU."""
    bad = _error("min_compute_capability", value, "must look like '9.0', 9.0 or (9, 0)")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value):
            raise bad
        if value[1] > 9:
            raise bad
        return (value[0], value[1])
    if isinstance(value, float) and not math.isfinite(value):
        raise bad
    if isinstance(value, (int, float, str)):
        match = _CC.fullmatch(str(value).strip())
        if match:
            return (int(match[1]), int(match[2] or 0))
    raise bad
