"""What trtllm-serve says about itself: its extra options (YAML), its log, the engine or checkpoint config.

CUDA graphs and the other serving optimisations, for both of its backends (PyTorch, TensorRT
engine). Patterns follow TensorRT-LLM `_torch/pyexecutor/model_engine.py` and tolerate drift
("generation-only" vs "generation only", process prefixes, the pre-PR-#5680 option names).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .engine_evidence import PAGED_KV_LOG, engine_findings, engine_verdict, paged_context_fmha
from .graphs import GraphVerdict, check_max_batch, format_sizes
from .log_evidence import Evidence, dig, evidence_at, locate_key, log_lines, pbtxt_bool, search_lines
from .optimisations import NAMES, Finding, OptimisationsReport, flag_state, quantised

_CREATE = re.compile(r"Creating CUDA graph instances for\s*(?P<n>\d+)\s*batch sizes")
_WARMUP = re.compile(r"Run generation[-\s_]?only CUDA graph warmup for batch size\s*=\s*(?P<bs>\d+)")
_PYCFG = re.compile(r"\buse_cuda_graph\s*=\s*(?P<v>True|False)")
_PYPAD = re.compile(r"\bcuda_graph_padding_enabled\s*=\s*(?P<v>True|False)")
_RUNTIME = re.compile(r"max_num_requests\s*=\s*\d+.*?\bmax_batch_size\s*=\s*(?P<bs>\d+)")
_READY = re.compile(r"Application startup complete|Uvicorn running on")


def detect_trtllm(
    options: Mapping[str, Any] | None = None,
    log_text: str | None = None,
    *,
    backend: str = "pytorch",
    max_batch_size: int | None = None,
    options_text: str | None = None,
    options_source: str = "extra_llm_api_options",
    log_source: str = "trtllm-serve.log",
) -> GraphVerdict:
    """Verdict from trtllm-serve's extra options (YAML as a dict, raw text for line numbers) and log."""
    opts = dict(options or {})
    if backend in ("tensorrt", "trt"):
        knobs = opts.get("extended_runtime_perf_knob_config") or {}
        line_no, line = locate_key(options_text, "extended_runtime_perf_knob_config.cuda_graph_mode")
        cfg = Evidence(options_source, line_no, line or f"extended_runtime_perf_knob_config: {knobs!r}")
        return engine_verdict(
            "trtllm-serve", _as_bool(knobs.get("cuda_graph_mode")), knobs.get("cuda_graph_cache_size"), [cfg], []
        )
    enabled, sizes, padded, cfg_ev, notes = _trtllm_config(opts, options_text, options_source)
    ev = [cfg_ev]
    if log_text is None:
        if not enabled:
            return GraphVerdict(
                "trtllm-serve", "off", (), "NONE", tuple(ev), (*notes, "configuration only: no log read")
            )
        notes.append("configured on, but no log was read to prove the capture")
        return GraphVerdict("trtllm-serve", "unknown", (), None, tuple(ev), tuple(notes), padded)
    lines = log_lines(log_text)
    if pyc := search_lines(lines, _PYCFG)[-1:]:
        ev.append(evidence_at(log_source, pyc[0]))
        if pad := _PYPAD.search(pyc[0][1]):
            padded = pad["v"] == "True"
    creates = search_lines(lines, _CREATE)
    runtime = search_lines(lines, _RUNTIME)
    if max_batch_size is None and runtime:
        max_batch_size = int(runtime[-1][2]["bs"])
        ev.append(evidence_at(log_source, runtime[-1]))
    if creates:  # warmup may run twice (memory estimation, then final): the last round counts
        last = creates[-1]
        ev.append(evidence_at(log_source, last))
        warm = [h for h in search_lines(lines, _WARMUP) if h[0] > last[0]]
        ev += [evidence_at(log_source, h) for h in warm]
        captured = tuple(sorted({int(h[2]["bs"]) for h in warm}))
        if not enabled:
            notes.append("the configuration says off, but the log shows graphs being created")
        if not captured:
            notes.append("graph instances announced but no batch size was warmed (no KV cache space?)")
            return GraphVerdict("trtllm-serve", "partial", (), "generation", tuple(ev), tuple(notes), padded)
        wanted = {s for s in sizes if not max_batch_size or s <= max_batch_size}
        if wanted and wanted != set(captured):
            notes.append(f"configured sizes {format_sizes(wanted)} but warmed {format_sizes(captured)}")
        if len(captured) < int(last[2]["n"]):
            notes.append(
                f"{last[2]['n']} batch sizes announced, {len(captured)} warmed (larger than the runtime max batch, or KV cache ran out)"
            )
        v = GraphVerdict("trtllm-serve", "on", captured, "generation", tuple(ev), tuple(notes), padded)
        return check_max_batch(v, max_batch_size)
    complete = bool(runtime or search_lines(lines, _READY))
    if not enabled:
        return GraphVerdict("trtllm-serve", "off", (), "NONE", tuple(ev), tuple(notes))
    if complete:
        notes.append("configured on, but the server never logged 'Creating CUDA graph instances'")
        return GraphVerdict("trtllm-serve", "downgraded", (), "NONE", tuple(ev), tuple(notes), padded)
    notes.append("the log ends before CUDA-graph warmup")
    return GraphVerdict("trtllm-serve", "unknown", (), None, tuple(ev), tuple(notes), padded)


def _trtllm_config(
    opts: Mapping[str, Any], text: str | None, source: str
) -> tuple[bool, tuple[int, ...], bool, Evidence, list[str]]:
    """(enabled, configured sizes, padding, evidence, notes) from the PyTorch-backend options."""
    legacy = opts if "use_cuda_graph" in opts else opts.get("pytorch_backend_config") or {}
    if "cuda_graph_config" not in opts and "use_cuda_graph" in legacy:  # before TensorRT-LLM PR #5680
        line_no, _ = locate_key(text, "use_cuda_graph")
        ev = Evidence(source, line_no, f"use_cuda_graph: {json.dumps(legacy['use_cuda_graph'])}")
        sizes = tuple(int(b) for b in legacy.get("cuda_graph_batch_sizes") or ())
        return bool(legacy["use_cuda_graph"]), sizes, bool(legacy.get("cuda_graph_padding_enabled")), ev, []
    line_no, _ = locate_key(text, "cuda_graph_config")
    if "cuda_graph_config" not in opts:
        text_ = "cuda_graph_config not given: the PyTorch backend enables CUDA graphs by default"
        return True, (), False, Evidence(source, 0, text_), []
    cfg = opts["cuda_graph_config"]
    ev = Evidence(source, line_no, f"cuda_graph_config: {json.dumps(cfg)}")
    if cfg is None or cfg is False:  # TOML has no null: a target may say false, written as null in the YAML
        return False, (), False, ev, ["cuda_graph_config: null disables CUDA graphs"]
    if not isinstance(cfg, Mapping):
        return True, (), False, ev, [f"cuda_graph_config has an unexpected value {cfg!r}"]
    sizes = tuple(sorted(int(b) for b in cfg.get("batch_sizes") or ()))
    return True, sizes, bool(cfg.get("enable_padding", False)), ev, []


def _as_bool(value: Any) -> bool | str | None:
    return pbtxt_bool(str(value)) if isinstance(value, (str, int)) and not isinstance(value, bool) else value


# ---------------------------------------------------------------- optimisations
_FEATURES = re.compile(r"AttentionRuntimeFeatures\((?P<body>[^)]*)\)")
_KV_DTYPE_LOG = re.compile(r"""kv_cache_dtype\s*=\s*["'](?P<v>\w+)["']""")
_MAX_REQ = re.compile(r"\bmax_num_requests\s*=\s*(?P<n>\d+)|TRTGptModel maxNumSequences:\s*(?P<seq>\d+)")


def _opt(opts: Mapping[str, Any], text: str | None, source: str, path: str, default: Any) -> tuple[Any, Evidence]:
    hit = dig(opts, path)
    if hit is None:
        return default, Evidence(source, 0, f"{path} not given (default {json.dumps(default)})")
    line_no, _ = locate_key(text, path)
    return hit[1], Evidence(source, line_no, f"{path}: {json.dumps(hit[1])}")


def trtllm_optimisations(
    options: Mapping[str, Any] | None = None,
    log_text: str | None = None,
    *,
    backend: str = "pytorch",
    engine_config: Mapping[str, Any] | None = None,
    quant_config: Mapping[str, Any] | None = None,
    max_batch_size: int | None = None,
    options_text: str | None = None,
    options_source: str = "extra_llm_api_options",
    log_source: str = "trtllm-serve.log",
    engine_source: str = "config.json",
) -> OptimisationsReport:
    """Findings for trtllm-serve: options (YAML dict), log, and the engine or checkpoint quant config."""
    opts = dict(options or {})
    graphs = detect_trtllm(
        opts,
        log_text,
        backend=backend,
        max_batch_size=max_batch_size,
        options_text=options_text,
        options_source=options_source,
        log_source=log_source,
    )
    lines = log_lines(log_text) if log_text is not None else []
    features = search_lines(lines, _FEATURES)[-1:]  # AttentionRuntimeFeatures(chunked_prefill=..., cache_reuse=...)
    feats = dict(re.findall(r"(\w+)=(\w+)", features[0][2]["body"])) if features else {}
    items: dict[str, Finding] = {}
    engine = engine_findings(engine_config, engine_source) if backend in ("tensorrt", "trt") else {}
    if engine:
        items["paged_kv_cache"] = engine["paged_kv_cache"]
    elif paged := search_lines(lines, PAGED_KV_LOG)[-1:]:
        m = paged[0][2]
        items["paged_kv_cache"] = Finding(
            "paged_kv_cache",
            "on",
            f"{m['n'] or m['total']} tokens",
            (evidence_at(log_source, paged[0]),),
            "the PyTorch backend's KV cache is always paged",
        )
    else:
        items["paged_kv_cache"] = Finding(
            "paged_kv_cache", "unknown", None, (), "no paged KV cache allocation in the log"
        )
    if req := search_lines(lines, _MAX_REQ)[-1:]:
        items["inflight_batching"] = Finding(
            "inflight_batching",
            "on",
            f"max_num_requests={req[0][2]['n'] or req[0][2]['seq']}",
            (evidence_at(log_source, req[0]),),
            "the LLM API executor always batches in flight",
        )
    else:
        items["inflight_batching"] = Finding(
            "inflight_batching", "unknown", None, (), "no executor start line in the log"
        )
    for name, key, path, default in (
        ("chunked_prefill", "chunked_prefill", "enable_chunked_prefill", False),
        ("prefix_caching", "cache_reuse", "kv_cache_config.enable_block_reuse", True),
    ):
        value, cfg_ev = _opt(opts, options_text, options_source, path, default)
        if key in feats:
            on = feats[key] == "True"
            note = "" if on == bool(value) else f"options say {json.dumps(value)} but the runtime reports {feats[key]}"
            items[name] = Finding(
                name, "on" if on else "off", feats[key], (cfg_ev, evidence_at(log_source, features[0])), note
            )
        else:
            items[name] = Finding(
                name,
                flag_state(bool(value)) if log_text is None else "unknown",
                json.dumps(value),
                (cfg_ev,),
                "configuration only" if log_text is None else "no AttentionRuntimeFeatures line in the log",
            )
    if engine:
        items["kv_cache_dtype"], items["quantization"] = engine["kv_cache_dtype"], engine["quantization"]
    else:
        items.update(_checkpoint_quant(opts, lines, quant_config, options_text, options_source, log_source))
    if (
        backend in ("tensorrt", "trt")
        and items["chunked_prefill"].state == "on"
        and paged_context_fmha(engine_config) is False
    ):
        f = items["chunked_prefill"]
        items["chunked_prefill"] = Finding(
            f.name,
            "downgraded",
            f.value,
            f.evidence,
            "the engine was built without use_paged_context_fmha, which chunked context requires",
        )
    return OptimisationsReport("trtllm-serve", tuple(items[n] for n in NAMES), graphs)


def _checkpoint_quant(
    opts: Mapping[str, Any], lines: list[str], quant: Mapping[str, Any] | None, text: str | None, osrc: str, lsrc: str
) -> dict[str, Finding]:
    """PyTorch backend: KV dtype from options/log (auto = the checkpoint's), weights from hf_quant_config.json."""
    q = quant.get("quantization", quant) if quant else None
    algo = q.get("quant_algo") if q else None
    kv_algo = q.get("kv_cache_quant_algo") if q else None
    qev = (Evidence("hf_quant_config.json", 0, f"quantization: {json.dumps(q)}"),) if q is not None else ()
    value, cfg_ev = _opt(opts, text, osrc, "kv_cache_config.dtype", "auto")
    ev: tuple[Evidence, ...] = (cfg_ev,)
    if log := search_lines(lines, _KV_DTYPE_LOG)[-1:]:
        value, ev = log[0][2]["v"], (cfg_ev, evidence_at(lsrc, log[0]))
    if value == "auto" and q is not None:
        kv = Finding("kv_cache_dtype", "on" if kv_algo else "off", f"auto (checkpoint: {kv_algo or 'none'})", ev + qev)
    elif value == "auto":
        kv = Finding(
            "kv_cache_dtype", "unknown", "auto", ev, "auto follows the checkpoint: pass its hf_quant_config.json"
        )
    else:
        kv = Finding("kv_cache_dtype", "on" if quantised(str(value)) else "off", str(value), ev)
    if q is None:
        qf = Finding("quantization", "unknown", None, (), "pass the checkpoint's hf_quant_config.json to prove it")
    else:
        qf = Finding("quantization", "on" if algo else "off", algo or "none", qev)
    return {"kv_cache_dtype": kv, "quantization": qf}
