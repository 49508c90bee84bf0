"""What a vLLM server's own log says: CUDA graphs and the other serving optimisations.

Patterns follow vLLM 0.32's format strings (`v1/engine/core.py`, `v1/worker/gpu_model_runner.py`,
`config/vllm.py`, `config/compilation.py`, `compilation/cuda_graph.py`) and tolerate drift:
spacing, version numbers, process prefixes, the older JSON-style compilation_config dump.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .graphs import GraphVerdict, State, check_max_batch
from .log_evidence import Evidence, clip, evidence_at, ints, log_lines, search_lines
from .optimisations import Finding, OptimisationsReport, flag_state, quantised

VLLM_CONFIG_DUMP = re.compile(r"Initializing an? (?:V\d+ )?LLM engine \((?P<version>[^)]*)\) with config:")
_ENFORCE = re.compile(r"\benforce_eager\s*=\s*(?P<v>True|False)")
_DEVICE = re.compile(r"\bdevice_config\s*=\s*(?P<v>\w+)")
_MODE = re.compile(
    r"""['"]cudagraph_mode['"]\s*:\s*(?:<CUDAGraphMode\.(?P<name>[A-Z_]+)[^>]*>|(?P<raw>\[[\d,\s]*\]|\([\d,\s]*\)|\d+|None|null))"""
)
_USE_CG = re.compile(r"""['"]use_cudagraph['"]\s*:\s*(?P<v>true|false|True|False)""")
_FULL_CG = re.compile(r"""['"]full_cuda_graph['"]\s*:\s*(?P<v>true|false|True|False)""")
_SIZES = re.compile(r"""['"]cudagraph_capture_sizes['"]\s*:\s*\[(?P<s>[\d,\s]*)\]""")
_RAW_MODES = {(0,): "NONE", (1,): "PIECEWISE", (2,): "FULL", (2, 0): "FULL_DECODE_ONLY", (2, 1): "FULL_AND_PIECEWISE"}
_BAR = re.compile(
    r"Capturing CUDA graphs?\s*\(\s*(?P<kind>[^,()]+?)\s*,\s*(?P<mode>[A-Z_]+)\s*\)"
    r"(?:\s*:\s*\d+%[^|]*\|[^|]*\|\s*(?P<done>\d+)\s*/\s*(?P<total>\d+))?"
)
_FINISHED = re.compile(r"Graph capturing finished in\s*[\d.]+\s*secs?")
_EAGER = re.compile(r"Enforce eager set|Cudagraph is disabled under eager mode")
_MODE_NAMES = r"(?:CUDAGraphMode\.)?(?P<mode>FULL_AND_PIECEWISE|FULL_DECODE_ONLY|PIECEWISE|FULL|NONE)\b"
_DOWNGRADE = re.compile(
    r"(?i:setting cudagraph_mode\s*(?:=|to)\s*|cudagraph_mode will be set to\s*"
    r"|overriding cudagraph_mode (?:from \S+ )?to\s*|cudagraph mode \S+ .*?overriding to\s*)" + _MODE_NAMES
)
_STATS = re.compile(r"\*\*CUDAGraph Stats:\*\*")
_ROW = re.compile(r"\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*([A-Z_]+)\s*\|\s*(\d+)\s*\|")


def _mode_from_bars(bars: Mapping[str, str]) -> str:
    decode = next((m for k, m in bars.items() if k.startswith("decode")), None)
    mixed = next((m for k, m in bars.items() if not k.startswith("decode")), None)
    if mixed == "FULL":
        return "FULL"
    if decode == "FULL":
        return "FULL_AND_PIECEWISE" if mixed == "PIECEWISE" else "FULL_DECODE_ONLY"
    return mixed or decode or "NONE"


def detect_vllm(log_text: str, *, source: str = "vllm.log", max_batch_size: int | None = None) -> GraphVerdict:
    """Verdict from a vLLM server log: resolved mode, capture bars, downgrades, replay tables.

    `max_batch_size` is the target's decode batch ceiling (`--max-num-seqs`): vLLM pads a batch up
    to the next capture size (sizes count tokens; one per sequence without speculative decoding)
    and runs anything above the largest size eagerly, which makes the verdict "partial".
    """
    lines = log_lines(log_text)
    ev: list[Evidence] = []
    notes: list[str] = []
    enforce = dump_mode = None
    sizes: tuple[int, ...] = ()
    dumps = search_lines(lines, VLLM_CONFIG_DUMP)
    if dumps:  # the last dump: the latest engine start in this log
        line_no, line, m = dumps[-1]
        notes.append(f"vLLM {m['version']} config dump at line {line_no}")
        hits = {p: (line_no, line, mm) for p in (_ENFORCE, _MODE, _USE_CG, _FULL_CG, _SIZES) if (mm := p.search(line))}
        ev += [evidence_at(source, h) for h in hits.values()]
        if _ENFORCE in hits:
            enforce = hits[_ENFORCE][2]["v"] == "True"
        if _MODE in hits:
            mm = hits[_MODE][2]
            dump_mode = mm["name"] or _RAW_MODES.get(ints(mm["raw"]), "NONE")
        elif _USE_CG in hits:  # vLLM <= 0.10: a boolean, piecewise graphs when true, full with full_cuda_graph
            full = _FULL_CG in hits and hits[_FULL_CG][2]["v"].lower() == "true"
            dump_mode = ("FULL" if full else "PIECEWISE") if hits[_USE_CG][2]["v"].lower() == "true" else "NONE"
        if _SIZES in hits:
            sizes = tuple(sorted(set(ints(hits[_SIZES][2]["s"]))))
        device = _DEVICE.search(line)
        if device and device["v"] != "cuda" and dump_mode in (None, "NONE"):
            notes.append(f"device_config={device['v']}: vLLM captures no CUDA graphs on this platform")
    eager = search_lines(lines, _EAGER)
    ev += [evidence_at(source, h) for h in eager]
    downgrades = [h for h in search_lines(lines, _DOWNGRADE) if not _EAGER.search(h[1])]
    ev += [evidence_at(source, h) for h in downgrades]
    # tqdm redraws a bar with \r (read_text turns those into line breaks): keep each bar's last drawing
    last_bar: dict[str, tuple[int, str, re.Match[str]]] = {}
    for i, line in enumerate(lines):
        for seg in line.split("\r"):
            if bar := _BAR.search(seg):
                last_bar[bar["kind"]] = (i + 1, seg, bar)
    bars = {kind: m["mode"] for kind, (_, _, m) in last_bar.items()}
    ev += [Evidence(source, n, seg.strip()) for n, seg, _ in last_bar.values()]
    incomplete = [f"{k} {m['done']}/{m['total']}" for k, (_, _, m) in last_bar.items() if m["done"] != m["total"]]
    finished = search_lines(lines, _FINISHED)
    ev += [evidence_at(source, h) for h in finished[-1:]]
    replays = _replay_counts(lines, source, ev)

    mode = _mode_from_bars(bars) if bars else downgrades[-1][2]["mode"] if downgrades else dump_mode
    if enforce or eager:
        state: State = "off"
        mode = "NONE"
        notes.append("enforce_eager is set: torch.compile and CUDA graphs are disabled")
    elif not (dumps or bars or finished or downgrades):
        state = "unknown"
        notes.append("no vLLM config dump or capture line found: not a vLLM log, or cut short")
    elif mode == "NONE":
        state = "downgraded" if downgrades else "off"
    elif downgrades:
        state = "downgraded"
        notes.append(f"vLLM changed cudagraph_mode on its own to {downgrades[-1][2]['mode']}")
    elif not (bars or finished):
        state = "unknown"
        notes.append(f"cudagraph_mode {mode} was requested but no capture was logged (log cut short?)")
    elif incomplete and not finished:
        state = "partial"
        notes.append("capture did not finish: " + ", ".join(incomplete))
    elif mode == "PIECEWISE":
        state = "partial"
        notes.append("PIECEWISE only: attention runs outside the graphs (no FULL decode graphs)")
    else:
        state = "on"
    if replays and state in ("on", "partial") and all(m == "NONE" for m, _ in replays):
        state = "partial"
        notes.append("graphs were captured but --cudagraph-metrics shows no step replayed one")
    captured = sizes if state != "off" and mode != "NONE" else ()
    verdict = GraphVerdict("vllm", state, captured, mode, tuple(ev), tuple(notes), True, False, replays)
    return check_max_batch(verdict, max_batch_size)


def _replay_counts(lines: list[str], source: str, ev: list[Evidence]) -> tuple[tuple[str, int], ...]:
    counts: dict[str, int] = {}
    in_table = seen_rows = False
    for i, line in enumerate(lines):  # each message line carries the log prefix, so "blank" is not empty
        if _STATS.search(line):
            in_table, seen_rows = True, False
            ev.append(Evidence(source, i + 1, line.strip()))
        elif in_table and (m := _ROW.search(line)):
            counts[m[4]] = counts.get(m[4], 0) + int(m[5])
            seen_rows = True
        elif in_table:  # blank prefixed lines and the column header come before rows; anything after ends it
            column_header = "Unpadded Tokens" in line or "|--" in line
            in_table = not seen_rows and ("|" not in line or column_header)
    return tuple(sorted(counts.items()))


# ---------------------------------------------------------------- optimisations
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
    graphs = detect_vllm(log_text or "", source=source, max_batch_size=max_batch_size)
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
            items.append(Finding(name, flag_state(None if v == "None" else v == "True"), v, (e,)))
        else:
            items.append(Finding(name, "unknown", None, (), "not in the config dump"))
    dtype = got.get("dtype", ("?", None))[0]
    if "kv_cache_dtype" in got:
        v, e = got["kv_cache_dtype"]
        shown = f"auto (= {dtype})" if v == "auto" else v
        items.append(Finding("kv_cache_dtype", "on" if quantised(v) else "off", shown, (e,)))
    else:
        items.append(Finding("kv_cache_dtype", "unknown", None, (), "not in the config dump"))
    if "quantization" in got:
        v, e = got["quantization"]
        items.append(Finding("quantization", "on" if v != "None" else "off", v, (e,)))
    else:
        items.append(Finding("quantization", "unknown", None, (), "not in the config dump"))
    return OptimisationsReport("vllm", tuple(items), graphs)
