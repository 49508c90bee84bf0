"""Print what pytest-llmserve sees on this machine, as JSON: inventory, label, marker verdicts, slices.

Run from the repository root on a GPU machine:  PYTHONPATH=. python docs/h100_run.py
Only NVML is used (no torch, no CUDA context). Try also CUDA_VISIBLE_DEVICES=0 or =GPU-<uuid>.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from pytest_llmserve.hardware import (
    GpuRequirement,
    detect_inventory,
    hardware_label,
    inventory_from_env_or_option,
    plan_gpu_slices,
    select_visible,
)

SAMPLE_MARKERS: list[dict[str, object]] = [
    {"sku": "H100"},
    {"sku": ["H100", "H200"], "min_memory_gb": 80},
    {"count": 2},
    {"min_compute_capability": "9.0"},
    {"min_compute_capability": "10.0"},
    {"min_memory_gb": 80},
    {"min_memory_gb": 100},
]


def main() -> dict[str, object]:
    started = time.perf_counter()
    inv = detect_inventory()
    detect_ms = (time.perf_counter() - started) * 1000
    context = inventory_from_env_or_option(None)
    slices: dict[str, object] = {}
    for workers in (1, 2):
        try:
            slices[f"{workers} workers"] = plan_gpu_slices(inv, workers)
        except ValueError as exc:
            slices[f"{workers} workers"] = f"error: {exc}"
    # UUID-prefix form of CUDA_VISIBLE_DEVICES, checked against the real UUIDs of this machine.
    uuid_check = None
    if inv.gpus and inv.gpus[0].uuid:
        prefix = inv.gpus[0].uuid[:12]
        chosen, note = select_visible(inv.gpus, prefix)
        uuid_check = {"value": prefix, "selects": [g.index for g in chosen], "note": note}
    return {
        "inventory": dataclasses.asdict(inv),
        "label": hardware_label(inv),
        "header": context.header(),
        "detect_ms": round(detect_ms, 1),
        "torch_imported": "torch" in sys.modules,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "markers": [
            {"gpu": kwargs, "unmet_reason": GpuRequirement.from_marker_kwargs(**kwargs).unmet_reason(inv)}
            for kwargs in SAMPLE_MARKERS
        ],
        "slices": slices,
        "uuid_prefix_check": uuid_check,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
