"""Hardware labels ('h100-80gb-x4', 'cpu-2c') and fake inventories written in the same words."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from .inventory import GpuInfo, Inventory, cpu_core_count
from .skus import KNOWN_SKUS, marketed_gb, sku_of

_GPU_GROUP = re.compile(r"(?P<sku>[a-z][a-z0-9]*)(?:-(?P<gb>\d+)gb)?(?:-x(?P<count>\d+))?")
_CPU_GROUP = re.compile(r"cpu-(?P<cores>\d+)c")

ACCEPTED_FORMS = (
    "accepted forms: '<sku>-<N>gb-x<count>' such as 'h100-80gb-x4' or 'a100-40gb-x2' "
    f"(sku one of {', '.join(KNOWN_SKUS)}; '-<N>gb' and '-x<count>' may be left out), several "
    "joined by '+' ('h100-80gb-x2+l4-24gb-x1'), optionally with '+cpu-<N>c'; 'cpu-<N>c' for a "
    "machine without GPU; or JSON such as '{\"gpus\": [{\"name\": \"NVIDIA H100 80GB HBM3\", "
    "\"memory_mib\": 81559, \"cc\": [9, 0]}], \"cpu_cores\": 16}' (per GPU also optional "
    "\"count\" and \"uuid\") for any other GPU"
)


def hardware_label(inv: Inventory) -> str:
    """The label baselines are filed under: '<sku>-<GB>gb-x<count>' per kind of GPU, or 'cpu-<N>c'.

    Different GPUs in one machine give one group each, sorted by sku then size and joined by '+',
    so the label does not depend on the order CUDA_VISIBLE_DEVICES lists them in. CPU cores are
    left out when there are GPUs: they rarely decide serving speed and vary between otherwise
    identical runners.
    """
    if not inv.gpus:
        return f"cpu-{inv.cpu_cores}c"
    groups = Counter((sku_of(gpu.name), gpu.memory_gb) for gpu in inv.gpus)
    return "+".join(f"{sku}-{gb}gb-x{n}" for (sku, gb), n in sorted(groups.items()))


def parse_fake_inventory(spec: str) -> Inventory:
    """An inventory described by a label-like spec or JSON, so CPU-only CI can exercise GPU logic."""
    text = spec.strip()
    if not text:
        raise ValueError(f"empty fake hardware spec; {ACCEPTED_FORMS}")
    gpus, cores = _parse_json(text) if text.startswith("{") else _parse_compact(text)
    return Inventory(gpus=gpus, cpu_cores=cores, driver=None, source=f"fake:{text}")


def _parse_compact(text: str) -> tuple[tuple[GpuInfo, ...], int]:
    gpus: list[GpuInfo] = []
    cores: int | None = None
    for part in text.lower().split("+"):
        cpu = _CPU_GROUP.fullmatch(part)
        if cpu:
            if cores is not None:
                raise ValueError(f"fake hardware spec {text!r} gives CPU cores twice; {ACCEPTED_FORMS}")
            cores = _positive(cpu["cores"], "CPU core count", text)
            continue
        group = _GPU_GROUP.fullmatch(part)
        if group is None:
            raise ValueError(f"fake hardware spec {text!r}: cannot read {part!r}; {ACCEPTED_FORMS}")
        sku = KNOWN_SKUS.get(group["sku"])
        if sku is None:
            raise ValueError(
                f"fake hardware spec {text!r}: unknown sku {group['sku']!r} (known: "
                f"{', '.join(KNOWN_SKUS)}); describe other GPUs with the JSON form; {ACCEPTED_FORMS}"
            )
        gb = _positive(group["gb"], "memory size", text) if group["gb"] else sku.default_gb
        mib = sku.memory_mib(gb)
        if marketed_gb(mib) != gb:
            raise ValueError(
                f"fake hardware spec {text!r}: {gb}gb is not a marketed size (a card reporting "
                f"{mib} MiB is labelled {marketed_gb(mib)}gb); use {marketed_gb(mib)}gb, or the "
                "JSON form with an exact memory_mib"
            )
        count = _positive(group["count"], "GPU count", text) if group["count"] else 1
        for _ in range(count):
            gpus.append(GpuInfo(len(gpus), sku.full_name(gb), mib, sku.compute_capability))
    return tuple(gpus), cpu_core_count() if cores is None else cores


def _positive(digits: str, what: str, text: str) -> int:
    value = int(digits)
    if value < 1:
        raise ValueError(f"fake hardware spec {text!r}: {what} must be at least 1, got {value}")
    return value


_JSON_KEYS = {"gpus", "cpu_cores", "driver"}
_JSON_GPU_KEYS = {"name", "memory_mib", "cc", "count", "uuid"}


def _parse_json(text: str) -> tuple[tuple[GpuInfo, ...], int]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"fake hardware spec is not valid JSON ({exc}); {ACCEPTED_FORMS}") from None
    if not isinstance(data, dict) or set(data) - _JSON_KEYS:
        extra = sorted(set(data) - _JSON_KEYS) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"fake hardware JSON: unexpected {extra}, allowed keys {sorted(_JSON_KEYS)}; {ACCEPTED_FORMS}"
        )
    entries = data.get("gpus", [])
    if not isinstance(entries, list):
        raise ValueError(f"fake hardware JSON: 'gpus' must be a list, got {entries!r}; {ACCEPTED_FORMS}")
    gpus: list[GpuInfo] = []
    for n, entry in enumerate(entries):
        name, mib, cc, count, uuid = _json_gpu(entry, n)
        for _ in range(count):
            gpus.append(GpuInfo(len(gpus), name, mib, cc, uuid))
    cores = data.get("cpu_cores", None)
    if cores is None:
        cores = cpu_core_count()
    elif not _is_int(cores) or cores < 1:
        raise ValueError(f"fake hardware JSON: 'cpu_cores' must be an integer >= 1, got {cores!r}")
    return tuple(gpus), cores


def _json_gpu(entry: Any, n: int) -> tuple[str, int, tuple[int, int], int, str | None]:
    where = f"fake hardware JSON: gpus[{n}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object, got {entry!r}; {ACCEPTED_FORMS}")
    missing = {"name", "memory_mib", "cc"} - set(entry)
    if missing or set(entry) - _JSON_GPU_KEYS:
        raise ValueError(
            f"{where} has keys {sorted(entry)}; needs name, memory_mib, cc and may have count, uuid"
        )
    name, mib, cc = entry["name"], entry["memory_mib"], entry["cc"]
    count, uuid = entry.get("count", 1), entry.get("uuid")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    if not _is_int(mib) or mib < 1:
        raise ValueError(f"{where}: 'memory_mib' must be an integer >= 1 (MiB), got {mib!r}")
    if not (isinstance(cc, list) and len(cc) == 2 and all(_is_int(x) and x >= 0 for x in cc)):
        raise ValueError(f"{where}: 'cc' must be [major, minor] such as [9, 0], got {cc!r}")
    if not _is_int(count) or count < 1:
        raise ValueError(f"{where}: 'count' must be an integer >= 1, got {count!r}")
    if uuid is not None and (not isinstance(uuid, str) or count != 1):
        raise ValueError(
            f"{where}: 'uuid' must be a string such as 'GPU-…' on an entry without count, got {uuid!r}"
        )
    return name.strip(), mib, (cc[0], cc[1]), count, uuid


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
