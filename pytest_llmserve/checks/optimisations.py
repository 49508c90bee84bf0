"""Evidence that the serving optimisations credited to a result are really on.

Same approach as `graphs.py`: read what the server wrote — vLLM's config dump and KV-cache line,
trtllm-serve's options plus its `AttentionRuntimeFeatures(...)` line, the Triton model config and
the tensorrtllm backend's "is not specified, will be set to ..." warnings, the TensorRT engine's
config.json — and return a verdict per optimisation with the lines it read. The report is
attached to every SLO result so a latency number never travels without what produced it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_llmserve.checks.graphs import (
    VLLM_CONFIG_DUMP,
    Evidence,
    GraphVerdict,
    State,
    clip,
    detect_cuda_graphs,
    evidence_at,
    locate_key,
    log_lines,
    param_evidence,
    pbtxt_bool,
    pbtxt_parameters,
    search_lines,
)

NAMES = ("paged_kv_cache", "inflight_batching", "chunked_prefill", "prefix_caching", "kv_cache_dtype", "quantization")


@dataclass(frozen=True, slots=True)
class Finding:
    """One optimisation: on/off/... with its value (e.g. 'fp8') and the lines that say so."""

    name: str
    state: State
    value: str | None = None
    evidence: tuple[Evidence, ...] = ()
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "value": self.value,
            "evidence": [e.to_dict() for e in self.evidence],
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class OptimisationsReport:
    """Every optimisation finding of one server, plus its CUDA-graph verdict."""

    backend: str
    items: tuple[Finding, ...]
    graphs: GraphVerdict

    def get(self, name: str) -> Finding:
        for item in self.items:
            if item.name == name:
                return item
        raise KeyError(f"no finding {name!r}; have {', '.join(i.name for i in self.items)}")

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "graphs": self.graphs.to_dict(), "items": [i.to_dict() for i in self.items]}

    def render(self) -> str:
        """A compact table: name, state, value, where the first evidence line is."""
        g = self.graphs
        rows = [("cuda_graphs", g.state, g.mode or "-", _where(g.evidence))]
        rows += [(i.name, i.state, i.value or "-", _where(i.evidence)) for i in self.items]
        widths = [max(len(r[c]) for r in rows + [("optimisation", "state", "value", "evidence")]) for c in range(3)]
        lines = [f"optimisations ({self.backend})"]
        for r in [("optimisation", "state", "value", "evidence"), *rows]:
            lines.append("  " + "  ".join(r[c].ljust(widths[c]) for c in range(3)) + "  " + r[3])
        notes = [f"  - {i.name}: {i.note}" for i in self.items if i.note] + [f"  - cuda_graphs: {n}" for n in g.notes]
        return "\n".join(lines + notes)


def _where(evidence: tuple[Evidence, ...]) -> str:
    if not evidence:
        return "(no evidence)"
    e = evidence[0]
    return f"{e.source}:{e.line_no}" if e.line_no else e.source


def _flag(value: bool | None) -> State:
    return "unknown" if value is None else "on" if value else "off"


def _quantised(dtype: str | None) -> bool:
    return bool(dtype) and dtype.lower() not in ("auto", "none", "null", "float16", "bfloat16", "float32", "half")


# --------------------------------------------------------------------------------------- vLLM
_KV_SIZE = re.compile(
    r"\b(?P<dev>[A-Z]+(?: \+ host)?) KV cache size:\s*(?P<n>[\d,]+)\s*tokens|# GPU blocks:\s*(?P<blocks>\d+)"
)
_FIELDS = {
    "chunked_prefill": re.compile(r"\b(?:enable_chunked_prefill|chunked_prefill_enabled)\s*=\s*(?P<v>True|False|None)"),
    "prefix_caching": re.compile(r"\benable_prefix_caching\s*=\s*(?P<v>True|False|None)"),
    "kv_cache_dtype": re.compile(r"\bkv_cache_dtype\s*=\s*(?P<v>[\w.]+)"),
    "quantization": re.compile(r"\bquantization\s*=\s*(?P<v>[\w.-]+)"),
    "dtype": re.compile(r"(?<![\w.])dtype\s*=\s*(?:torch\.)?(?P<v>\w+)"),
}


def vllm_optimisations(
    log_text: str, *, source: str = "vllm.log", max_batch_size: int | None = None
) -> OptimisationsReport:
    """Findings from a vLLM log: the (last) config dump and the KV-cache allocation line."""
    graphs = detect_cuda_graphs("vllm", log_text=log_text, log_source=source, max_batch_size=max_batch_size)
    lines = log_lines(log_text)
    dumps = search_lines(lines, VLLM_CONFIG_DUMP)
    got: dict[str, tuple[str, Evidence]] = {}
    if dumps:
        line_no, line, _ = dumps[-1]
        for name, pat in _FIELDS.items():
            if m := pat.search(line):
                got[name] = (m["v"], Evidence(source, line_no, clip(line, m.start(), m.end())))
    items = []
    if kv := search_lines(lines, _KV_SIZE)[-1:]:
        m = kv[0][2]
        value = f"{m['n']} tokens ({m['dev']})" if m["n"] else f"{m['blocks']} GPU blocks"
        items.append(
            Finding("paged_kv_cache", "on", value, (evidence_at(source, kv[0]),), "vLLM's KV cache is always paged")
        )
    else:
        items.append(Finding("paged_kv_cache", "unknown", None, (), "no KV-cache allocation line (log cut short?)"))
    if dumps:
        head = dumps[-1]
        items.append(
            Finding(
                "inflight_batching",
                "on",
                "continuous batching",
                (evidence_at(source, head),),
                "the vLLM scheduler always batches continuously",
            )
        )
    else:
        items.append(Finding("inflight_batching", "unknown", None, (), "no vLLM config dump found"))
    for name in ("chunked_prefill", "prefix_caching"):
        if name in got:
            v, e = got[name]
            items.append(Finding(name, _flag(None if v == "None" else v == "True"), v, (e,)))
        else:
            items.append(Finding(name, "unknown", None, (), "not in the config dump"))
    dtype = got.get("dtype", ("?", None))[0]
    if "kv_cache_dtype" in got:
        v, e = got["kv_cache_dtype"]
        shown = f"auto (= {dtype})" if v == "auto" else v
        items.append(Finding("kv_cache_dtype", "on" if _quantised(v) else "off", shown, (e,)))
    else:
        items.append(Finding("kv_cache_dtype", "unknown", None, (), "not in the config dump"))
    if "quantization" in got:
        v, e = got["quantization"]
        items.append(Finding("quantization", "on" if v != "None" else "off", v, (e,)))
    else:
        items.append(Finding("quantization", "unknown", None, (), "not in the config dump"))
    return OptimisationsReport("vllm", tuple(items), graphs)


# ------------------------------------------------------------------ TensorRT engine config.json
def _dig(cfg: Mapping[str, Any] | None, *paths: str) -> tuple[str, Any] | None:
    """First dotted path present in the config: (path, value)."""
    for path in paths:
        node: Any = cfg
        for key in path.split("."):
            if not isinstance(node, Mapping) or key not in node:
                break
            node = node[key]
        else:
            return path, node
    return None


def engine_findings(engine: Mapping[str, Any] | None, source: str = "config.json") -> dict[str, Finding]:
    """paged_kv_cache / kv_cache_dtype / quantization from an engine config.json (new or pre-0.9 schema)."""
    out: dict[str, Finding] = {}
    if engine is None:
        for name in ("paged_kv_cache", "kv_cache_dtype", "quantization"):
            out[name] = Finding(name, "unknown", None, (), "no engine config.json was given")
        return out

    def ev(path: str, value: Any) -> Evidence:
        return Evidence(source, 0, f"{path}: {json.dumps(value)}")

    hit = _dig(
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
        hit = _dig(engine, f"pretrained_config.quantization.{path}", f"quantization.{path}")
        if hit:
            out[name] = Finding(name, "on" if hit[1] else "off", str(hit[1]) if hit[1] else "none", (ev(*hit),))
        else:
            out[name] = Finding(
                name, "unknown", None, (), f"engine config has no quantization.{path} (pre-0.9 schema?)"
            )
    return out


def _paged_context_fmha(engine: Mapping[str, Any] | None) -> bool | None:
    hit = _dig(engine, "build_config.plugin_config.use_paged_context_fmha", "plugin_config.use_paged_context_fmha")
    return bool(hit[1]) if hit else None


# ------------------------------------------------------------------------------ trtllm-serve
_FEATURES = re.compile(r"AttentionRuntimeFeatures\((?P<body>[^)]*)\)")
_PAGED_TRT = re.compile(
    r"Allocated\s*(?P<gib>[\d.]+)\s*GiB for max tokens in paged KV cache\s*\((?P<n>\d+)\)|Using\s*(?P<total>\d+)\s*total tokens in paged KV cache"
)
_KV_DTYPE_LOG = re.compile(r"""kv_cache_dtype\s*=\s*["'](?P<v>\w+)["']""")
_MAX_REQ = re.compile(r"\bmax_num_requests\s*=\s*(?P<n>\d+)|TRTGptModel maxNumSequences:\s*(?P<seq>\d+)")


def _opt(opts: Mapping[str, Any], text: str | None, source: str, path: str, default: Any) -> tuple[Any, Evidence]:
    hit = _dig(opts, path)
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
    graphs = detect_cuda_graphs(
        "trtllm-serve",
        log_text=log_text,
        log_source=log_source,
        options=opts,
        options_text=options_text,
        options_source=options_source,
        max_batch_size=max_batch_size,
        trtllm_backend=backend,
    )
    lines = log_lines(log_text) if log_text is not None else []
    features = search_lines(lines, _FEATURES)[-1:]  # AttentionRuntimeFeatures(chunked_prefill=..., cache_reuse=...)
    feats = dict(re.findall(r"(\w+)=(\w+)", features[0][2]["body"])) if features else {}
    items: dict[str, Finding] = {}
    engine = engine_findings(engine_config, engine_source) if backend in ("tensorrt", "trt") else {}
    if engine:
        items["paged_kv_cache"] = engine["paged_kv_cache"]
    elif paged := search_lines(lines, _PAGED_TRT)[-1:]:
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
                _flag(bool(value)) if log_text is None else "unknown",
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
        and _paged_context_fmha(engine_config) is False
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
        kv = Finding("kv_cache_dtype", "on" if _quantised(str(value)) else "off", str(value), ev)
    if q is None:
        qf = Finding("quantization", "unknown", None, (), "pass the checkpoint's hf_quant_config.json to prove it")
    else:
        qf = Finding("quantization", "on" if algo else "off", algo or "none", qev)
    return {"kv_cache_dtype": kv, "quantization": qf}


# ------------------------------------------------------------------------------------ Triton
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
    graphs = detect_cuda_graphs(
        "triton", log_text=log_text, log_source=log_source, config_pbtxt=config_pbtxt, config_source=config_source
    )
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
    if hit := search_lines(lines, _PAGED_TRT)[-1:]:
        extra.append(evidence_at(log_source, hit[0]))
        if paged.state == "unknown":
            paged = Finding("paged_kv_cache", "on", paged.value, (), "")
    fraction = params.get("kv_cache_free_gpu_mem_fraction", (None, 0))[0]
    shown = [v for v in (paged.value, fraction and not fraction.startswith("${") and f"fraction {fraction}") if v]
    value = ", ".join(shown) or None
    items["paged_kv_cache"] = Finding("paged_kv_cache", paged.state, value, paged.evidence + tuple(extra), paged.note)

    logged = {m["key"]: (m["v"], (n, line, m)) for n, line, m in search_lines(lines, _NOT_SPEC)}
    fmha = _paged_context_fmha(engine_config)
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
        state = _flag(flag)  # type: ignore[arg-type]
        if state == "on" and fmha is False:
            state, note = "downgraded", "the engine was built without use_paged_context_fmha, which this needs"
        items[name] = Finding(name, state, value, tuple(ev), note)
    return OptimisationsReport("triton", tuple(items[n] for n in NAMES), graphs)


# -------------------------------------------------------------------------------- dispatcher
def collect_optimisations(
    kind: str,
    *,
    log_text: str | None = None,
    log_source: str = "server.log",
    options: Mapping[str, Any] | None = None,
    options_text: str | None = None,
    options_source: str = "extra_llm_api_options",
    config_pbtxt: str | None = None,
    config_source: str = "tensorrt_llm/config.pbtxt",
    engine_config: Mapping[str, Any] | None = None,
    quant_config: Mapping[str, Any] | None = None,
    max_batch_size: int | None = None,
    trtllm_backend: str = "pytorch",
) -> OptimisationsReport:
    """One entry point per target kind (vllm | trtllm-serve | triton | openai)."""
    if kind == "vllm":
        return vllm_optimisations(log_text or "", source=log_source, max_batch_size=max_batch_size)
    if kind == "trtllm-serve":
        return trtllm_optimisations(
            options,
            log_text,
            backend=trtllm_backend,
            engine_config=engine_config,
            quant_config=quant_config,
            max_batch_size=max_batch_size,
            options_text=options_text,
            options_source=options_source,
            log_source=log_source,
        )
    if kind == "triton" and config_pbtxt is not None:
        return triton_optimisations(
            config_pbtxt, log_text, engine_config=engine_config, config_source=config_source, log_source=log_source
        )
    graphs = detect_cuda_graphs(kind, log_text=log_text, config_pbtxt=config_pbtxt)
    why = "external server: nothing to read" if kind == "openai" else "no tensorrt_llm config.pbtxt was given"
    return OptimisationsReport(kind, tuple(Finding(n, "unknown", None, (), why) for n in NAMES), graphs)
