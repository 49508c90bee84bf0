"""What Triton with the TensorRT-LLM backend says: the tensorrt_llm model's config.pbtxt and the backend log.

CUDA graphs and the other serving optimisations. Patterns follow tensorrtllm_backend's
`model_instance_state.cc` / `model_state.cc` ("... is not specified, will be set to ...").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .engine_evidence import PAGED_KV_LOG, engine_findings, engine_verdict, paged_context_fmha
from .graphs import GraphVerdict, State
from .log_evidence import Evidence, evidence_at, log_lines, param_evidence, pbtxt_bool, pbtxt_parameters, search_lines
from .optimisations import NAMES, Finding, OptimisationsReport, flag_state

_NOT_SPECIFIED = re.compile(r"cuda_graph_mode is not specified")
_CACHE_NO_EFFECT = re.compile(r"cudaGraphCacheSize to a value greater than 0 without enabling cudaGraphMode")


def detect_triton(
    config_pbtxt: str,
    log_text: str | None = None,
    *,
    config_source: str = "tensorrt_llm/config.pbtxt",
    log_source: str = "tritonserver.log",
) -> GraphVerdict:
    """Verdict from the tensorrt_llm model's config.pbtxt (`cuda_graph_mode`) and Triton's log."""
    params = pbtxt_parameters(config_pbtxt)
    ev: list[Evidence] = []
    notes: list[str] = []
    raw = params.get("cuda_graph_mode", (None, 0))[0]
    flag = pbtxt_bool(raw)
    if "cuda_graph_mode" in params:
        ev.append(param_evidence(config_source, params, "cuda_graph_mode"))
    else:
        ev.append(Evidence(config_source, 0, "no cuda_graph_mode parameter (backend default: false)"))
    if flag == "invalid":
        notes.append(
            f"cuda_graph_mode {raw!r} is not a bool the backend accepts (true/false/1/0): it falls back to false"
        )
    elif flag is None and raw is not None:
        notes.append(f"cuda_graph_mode left as {raw!r}: fill_template.py did not set it, so it is false")
    size = params.get("cuda_graph_cache_size", (None, 0))[0]
    if "cuda_graph_cache_size" in params:
        ev.append(param_evidence(config_source, params, "cuda_graph_cache_size"))
    if log_text is not None:
        lines = log_lines(log_text)
        for hit in search_lines(lines, _NOT_SPECIFIED) + search_lines(lines, _CACHE_NO_EFFECT):
            ev.append(evidence_at(log_source, hit))
            if flag is True:
                flag = "invalid"
                notes.append(
                    "the config says true but the backend log shows graphs off (another model repository loaded?)"
                )
    return engine_verdict("triton", flag, size, ev, notes)


# ---------------------------------------------------------------- optimisations
_NOT_SPEC = re.compile(
    r"(?P<key>enable_kv_cache_reuse|enable_chunked_context) is not specified, will be set to (?P<v>true|false)"
)
_BATCHING: dict[str, State] = {"inflight_fused_batching": "on", "inflight_batching": "on", "V1": "off", "v1": "off"}
_CHUNK_ON = re.compile(r"enable_chunked_context is set to true")


def triton_optimisations(
    config_pbtxt: str,
    log_text: str | None = None,
    *,
    engine_config: Mapping[str, Any] | None = None,
    config_source: str = "tensorrt_llm/config.pbtxt",
    log_source: str = "tritonserver.log",
    engine_source: str = "config.json",
) -> OptimisationsReport:
    """Findings for Triton + tensorrtllm backend: config.pbtxt parameters, backend log, engine config."""
    graphs = detect_triton(config_pbtxt, log_text, config_source=config_source, log_source=log_source)
    params = pbtxt_parameters(config_pbtxt)
    lines = log_lines(log_text) if log_text is not None else []
    engine = engine_findings(engine_config, engine_source)
    items = dict(engine)

    kind = params.get("gpt_model_type", ("", 0))[0]
    bev = (param_evidence(config_source, params, "gpt_model_type"),) if "gpt_model_type" in params else ()
    state: State = _BATCHING.get(kind, "unknown")  # the backend's getBatchingTypeFromParams accepts these
    note = (
        "" if state != "unknown" else "gpt_model_type must be inflight_fused_batching or V1; the backend refuses others"
    )
    items["inflight_batching"] = Finding("inflight_batching", state, kind or None, bev, note)

    paged = items["paged_kv_cache"]
    extra = (
        [param_evidence(config_source, params, "kv_cache_free_gpu_mem_fraction")]
        if "kv_cache_free_gpu_mem_fraction" in params
        else []
    )
    if hit := search_lines(lines, PAGED_KV_LOG)[-1:]:
        extra.append(evidence_at(log_source, hit[0]))
        if paged.state == "unknown":
            paged = Finding("paged_kv_cache", "on", paged.value, (), "")
    fraction = params.get("kv_cache_free_gpu_mem_fraction", (None, 0))[0]
    shown = [v for v in (paged.value, fraction and not fraction.startswith("${") and f"fraction {fraction}") if v]
    value = ", ".join(shown) or None
    items["paged_kv_cache"] = Finding("paged_kv_cache", paged.state, value, paged.evidence + tuple(extra), paged.note)

    logged = {m["key"]: (m["v"], (n, line, m)) for n, line, m in search_lines(lines, _NOT_SPEC)}
    fmha = paged_context_fmha(engine_config)
    for name, key in (("chunked_prefill", "enable_chunked_context"), ("prefix_caching", "enable_kv_cache_reuse")):
        raw = params[key][0] if key in params else None
        flag = pbtxt_bool(raw)
        ev = [param_evidence(config_source, params, key)] if key in params else []
        note, value = "", raw if flag is not None else "unset"
        if flag is None and key in logged:  # the backend's own word on an unset parameter (default varies by version)
            ev.append(evidence_at(log_source, logged[key][1]))
            flag, value = logged[key][0] == "true", f"unset (backend default: {logged[key][0]})"
        elif key == "enable_chunked_context" and (on := search_lines(lines, _CHUNK_ON)):
            ev.append(evidence_at(log_source, on[-1]))
        if flag == "invalid":
            flag, note = None, f"{key} {raw!r} is not a bool the backend accepts (true/false/1/0)"
        elif flag is None:
            note = f"{key} unset and no backend log read: its default depends on the backend version"
        state = flag_state(flag)
        if state == "on" and fmha is False:
            state, note = "downgraded", "the engine was built without use_paged_context_fmha, which this needs"
        items[name] = Finding(name, state, value, tuple(ev), note)
    return OptimisationsReport("triton", tuple(items[n] for n in NAMES), graphs)
