"""The host CPU's instruction-set flags (Linux /proc/cpuinfo), for backends that need some of them."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first processor in a /proc/cpuinfo text (x86 `flags`, ARM `Features`)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This host's CPU flags; empty where /proc/cpuinfo cannot be read."""
    try:
        return parse_cpu_flags(CPUINFO.read_text(errors="replace"))
    except OSError:
        return frozenset()


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The first `model name` in /proc/cpuinfo, or 'unknown CPU'."""
    try:
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return "unknown CPU"
