"""Hardware inventory (NVML, never a CUDA context), labels, the `gpu` marker and xdist GPU slices.

The hardware setting
--------------------
One setting decides which inventory `gpu` markers are checked against and which label baselines
are filed under. It is read, first non-empty wins, from: the `--llmserve-hardware` option (as
resolved by the plugin), the `LLMSERVE_HARDWARE` environment variable, `hardware` in
`[tool.llmserve]`; otherwise it is `auto`. Its value is one of:

* `auto` — detect GPUs through NVML (nvidia-ml-py), restricted and ordered by
  CUDA_VISIBLE_DEVICES; the label comes from that inventory (`h100-80gb-x4`, or `cpu-2c` when
  NVML is missing or finds no GPU; the reason is kept in `Inventory.source`).
* `fake:<spec>` — use a made-up inventory and no NVML at all, so CPU-only CI can exercise
  markers, labels and slices. `<spec>` is a label such as `h100-80gb-x4`, `a100-40gb-x2`,
  `h100-80gb-x2+l4-24gb-x1`, `cpu-2c` (optionally `+cpu-<N>c` after GPUs), with skus from
  `KNOWN_SKUS`; or JSON: `{"gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559,
  "cc": [9, 0]}], "cpu_cores": 16}`. The label is computed from the fake inventory.
* any other value — a label override: the inventory is still detected (markers still see the
  real GPUs), only the label baselines are filed under changes. It must be lowercase letters,
  digits and `. _ + -`, since it names a directory. Use it to pool baselines of equivalent
  runners, e.g. `h100-80gb-x8` for both SXM and HGX hosts.

Labels are `<sku>-<GB>gb-x<count>` per kind of GPU, sorted and joined by `+`; GB is the marketed
size (an H100's 81,559 MiB is 80gb), see `marketed_gb`.
"""

from __future__ import annotations

from .context import ENV_VAR, HardwareContext, inventory_from_env_or_option
from .inventory import GpuInfo, Inventory, detect_inventory, select_visible
from .labels import ACCEPTED_FORMS, hardware_label, parse_fake_inventory
from .requirement import SIGNATURE, GpuRequirement
from .skus import KNOWN_SKUS, MARKETED_SIZES_GB, marketed_gb, sku_of
from .slices import gpu_slice_for_worker, plan_gpu_slices

__all__ = [
    "ACCEPTED_FORMS",
    "ENV_VAR",
    "KNOWN_SKUS",
    "MARKETED_SIZES_GB",
    "SIGNATURE",
    "GpuInfo",
    "GpuRequirement",
    "HardwareContext",
    "Inventory",
    "detect_inventory",
    "gpu_slice_for_worker",
    "hardware_label",
    "inventory_from_env_or_option",
    "marketed_gb",
    "parse_fake_inventory",
    "plan_gpu_slices",
    "select_visible",
    "sku_of",
]
