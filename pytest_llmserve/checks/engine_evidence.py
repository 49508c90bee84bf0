"""Evidence shared by both servers that run a TensorRT-LLM engine (trtllm-serve's TensorRT backend, Triton).

The engine's config.json (paged KV cache, KV-cache and weight quantization, paged context FMHA),
the runtime's paged-KV-cache allocation line, and the CUDA-graph verdict of the TensorRT C++
runtime (graphs captured on demand per batch shape).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .graphs import GraphVerdict
from .log_evidence import Evidence, dig
from .optimisations import Finding

PAGED_KV_LOG = re.compile(
    r"Allocated\s*(?P<gib>[\d.]+)\s*GiB for max tokens in paged KV cache\s*\((?P<n>\d+)\)|Using\s*(?P<total>\d+)\s*total tokens in paged KV cache"
)


def engine_findings(engine: Mapping[str, Any] | None, source: str = "config.json") -> dict[str, Finding]:
    """paged_kv_cache / kv_cache_dtype / quantization from an engine config.json (new or pre-0.9 schema)."""
    out: dict[str, Finding] = {}
    if engine is None:
        for name in ("paged_kv_cache", "kv_cache_dtype", "quantization"):
            out[name] = Finding(name, "unknown", None, (), "no engine config.json was given")
        return out

    def ev(path: str, value: Any) -> Evidence:
        return Evidence(source, 0, f"{path}: {json.dumps(value)}")

    hit = dig(
        engine,
        "build_config.kv_cache_type",
        "build_config.plugin_config.paged_kv_cache",
        "plugin_config.paged_kv_cache",
    )
    if hit:
        on = str(hit[1]).upper() in ("PAGED", "TRUE", "ENABLE") if not isinstance(hit[1], bool) else hit[1]
        out["paged_kv_cache"] = Finding("paged_kv_cache", "on" if on else "off", str(hit[1]), (ev(*hit),))
    else:
        out["paged_kv_cache"] = Finding("paged_kv_cache", "unknown", None, (), "engine config names no KV-cache type")
    for name, path in (("kv_cache_dtype", "kv_cache_quant_algo"), ("quantization", "quant_algo")):
        hit = dig(engine, f"pretrained_config.quantization.{path}", f"quantization.{path}")
        if hit:
            out[name] = Finding(name, "on" if hit[1] else "off", str(hit[1]) if hit[1] else "none", (ev(*hit),))
        else:
            out[name] = Finding(
                name, "unknown", None, (), f"engine config has no quantization.{path} (pre-0.9 schema?)"
            )
    return out


def paged_context_fmha(engine: Mapping[str, Any] | None) -> bool | None:
    hit = dig(engine, "build_config.plugin_config.use_paged_context_fmha", "plugin_config.use_paged_context_fmha")
    return bool(hit[1]) if hit else None


def engine_verdict(
    backend: str, flag: bool | str | None, cache_size: Any, ev: list[Evidence], notes: list[str]
) -> GraphVerdict:
    """TensorRT C++ runtime: graphs captured on demand per batch shape, LRU of the cache size."""
    if flag == "invalid":
        return GraphVerdict(backend, "downgraded", (), "NONE", tuple(ev), tuple(notes))
    if flag is not True:
        return GraphVerdict(backend, "off", (), "NONE", tuple(ev), tuple(notes))
    try:
        size = int(str(cache_size)) if cache_size not in (None, "") else 0
    except ValueError:
        size = 0
    if size <= 1:
        notes.append(
            f"cuda_graph_cache_size {size}: the runtime keeps max(size, 1) = 1 graph instance, "
            "so every change of batch shape re-captures; set it to the number of batch shapes served"
        )
        return GraphVerdict(backend, "partial", (), "on-demand", tuple(ev), tuple(notes), on_demand=True)
    notes.append(f"graphs are captured on demand and cached (up to min(max_batch_size, {size}) instances)")
    return GraphVerdict(backend, "on", (), "on-demand", tuple(ev), tuple(notes), on_demand=True)
