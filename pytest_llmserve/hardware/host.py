"""Which host recorded a baseline: the CPU model and the instruction sets that change CPU serving speed.

A hardware label ('cpu-2c', 'h200-141gb-x1') names the resources a test needs; two hosts of one label
can still differ several-fold on a CPU server (AVX-512/AMX kernels against AVX2 ones), so a statistical
baseline also stores this fingerprint and a comparison from another host cannot give a verdict.
"""

from __future__ import annotations

from typing import Any, Mapping

from .cpu_features import cpu_flags, cpu_model

# x86 flags the CPU builds of vLLM and PyTorch pick kernels by; on ARM the SVE/bf16 features
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8",
               "sve", "sve2", "bf16", "asimd")


def host_fingerprint(model: str | None = None, flags: frozenset[str] | None = None) -> dict[str, Any]:
    """{"cpu": model name, "isa": [the SPEED_FLAGS present]} of this host (or of the given model/flags)."""
    present = cpu_flags() if flags is None else flags
    return {"cpu": cpu_model() if model is None else model, "isa": [f for f in SPEED_FLAGS if f in present]}


def host_text(host: Mapping[str, Any]) -> str:
    isa = ", ".join(host.get("isa") or []) or "none of " + "/".join(SPEED_FLAGS[:3])
    return f"{host.get('cpu', 'unknown CPU')} ({isa})"


def host_difference(stored: Mapping[str, Any] | None, current: Mapping[str, Any]) -> str | None:
    """Why a baseline's host is not this one (None: the same, or the entry does not say)."""
    if not isinstance(stored, Mapping) or not stored:
        return None
    if stored.get("cpu") == current.get("cpu") and sorted(stored.get("isa") or []) == sorted(current.get("isa") or []):
        return None
    return f"the baseline was recorded on {host_text(stored)}, this host is {host_text(current)}"
