"""Known GPU models, the short names used in labels, and the marketed-memory rule."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Sizes (GB) that GPUs are sold with. NVML reports less than the marketed size (the driver and,
# on GDDR cards, ECC reserve some), e.g. 81,559 MiB = 79.6 GiB for an "80GB" H100.
MARKETED_SIZES_GB: tuple[int, ...] = (
    4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 128, 141, 144, 180, 192, 288,
)
# ECC on GDDR cards takes 1/16 of the memory; with the driver's share, L4 and L40S report 6.7 %
# under their marketed size. 8 % covers that while leaving room between neighbouring sizes.
_SNAP_SLACK = 1.08


def marketed_gb(memory_mib: int) -> int:
    """The marketed size in GB of a GPU whose NVML total is `memory_mib`.

    Rule: the smallest known marketed size at or above the reading (minus 0.5 GiB, for cards that
    report their whole memory), if it is within 8 % of the reading; otherwise the reading rounded
    to whole GiB. Checked against NVML totals: H100 81,559 → 80, H200 143,771 → 141, B200 183,359
    → 180, A100 40,960 → 40, L4 23,034 → 24, L40S 46,068 → 48, A10G 23,028 → 24.
    """
    gib = memory_mib / 1024
    for size in MARKETED_SIZES_GB:
        if size >= gib - 0.5:
            if size <= gib * _SNAP_SLACK:
                return size
            break
    return max(1, round(gib))


@dataclass(frozen=True, slots=True)
class Sku:
    """A GPU model: its label name, compute capability and NVML names/totals per memory size."""

    label: str
    compute_capability: tuple[int, int]
    variants: dict[int, tuple[str, int]]  # marketed GB -> (NVML name, NVML total MiB)
    display: str  # name used for sizes not in `variants`

    def full_name(self, memory_gb: int) -> str:
        return self.variants[memory_gb][0] if memory_gb in self.variants else self.display

    def memory_mib(self, memory_gb: int) -> int:
        # Unknown sizes get an exact GiB figure; marketed_gb maps it back only for sizes that the
        # rule keeps (parse_fake_inventory checks that).
        return self.variants[memory_gb][1] if memory_gb in self.variants else memory_gb * 1024

    @property
    def default_gb(self) -> int:
        return next(iter(self.variants))


# NVML names and totals as nvidia-smi prints them on these cards (first variant is the default).
KNOWN_SKUS: dict[str, Sku] = {
    sku.label: sku
    for sku in (
        Sku("h100", (9, 0), {80: ("NVIDIA H100 80GB HBM3", 81559)}, "NVIDIA H100"),
        Sku("h200", (9, 0), {141: ("NVIDIA H200", 143771)}, "NVIDIA H200"),
        Sku("a100", (8, 0), {80: ("NVIDIA A100-SXM4-80GB", 81920), 40: ("NVIDIA A100-SXM4-40GB", 40960)},
            "NVIDIA A100"),
        Sku("l4", (8, 9), {24: ("NVIDIA L4", 23034)}, "NVIDIA L4"),
        Sku("l40s", (8, 9), {48: ("NVIDIA L40S", 46068)}, "NVIDIA L40S"),
        Sku("a10g", (8, 6), {24: ("NVIDIA A10G", 23028)}, "NVIDIA A10G"),
        Sku("b200", (10, 0), {180: ("NVIDIA B200", 183359)}, "NVIDIA B200"),
    )
}

# Words in NVML names that say vendor, form factor or memory, not the model.
_NOISE = re.compile(r"^(nvidia|tesla|geforce|quadro|generation|edition|pcie|nvl|sxm\d*|hbm\d*e?|\d+gb)$")


def sku_of(name: str) -> str:
    """The model name used in labels: 'NVIDIA H100 80GB HBM3' → 'h100', 'NVIDIA GeForce RTX 4090' → 'rtx4090'.

    PCIe and NVL boards keep that word ('NVIDIA H100 PCIe' → 'h100pcie'): they run at other clocks
    and power than the SXM part, so their baselines must not be mixed with it.
    """
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    base = next((w for w in words if w in KNOWN_SKUS), None)
    if base is None:
        base = "".join(w for w in words if not _NOISE.match(w)) or "gpu"
    board = next((w for w in words if w in ("pcie", "nvl")), "")
    return base + board
