"""CUDA-graph evidence: did the server really capture graphs, for which batch sizes, in which mode?

Each detector reads what the server itself wrote (startup log, the options it was given, the
Triton model config) and returns a `GraphVerdict` carrying the lines it read, so a failing gate
quotes its proof. Patterns follow the servers' own format strings — vLLM 0.32
(`v1/engine/core.py`, `v1/worker/gpu_model_runner.py`, `config/vllm.py`, `config/compilation.py`,
`compilation/cuda_graph.py`), TensorRT-LLM `_torch/pyexecutor/model_engine.py`, and the
tensorrtllm_backend `model_instance_state.cc` / `model_state.cc` — and tolerate drift: spacing,
version numbers, "generation-only" vs "generation only", process prefixes, ANSI colour, CRLF and
tqdm carriage returns, the older JSON-style compilation_config dump.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

State = Literal["on", "off", "partial", "downgraded", "unknown"]
REQUIRE_LEVELS = {"on": ("on",), "any": ("on", "partial", "downgraded"), "off": ("off",)}
KINDS = ("vllm", "trtllm-serve", "triton", "openai")


@dataclass(frozen=True, slots=True)
class Evidence:
    """One line a detector read; `line_no` is 1-based, 0 for a configuration value (no file line)."""

    source: str
    line_no: int
    text: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line_no}" if self.line_no else self.source
        return f"{where}: {self.text}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "line_no": self.line_no, "text": self.text}


@dataclass(frozen=True, slots=True)
class GraphVerdict:
    """Whether CUDA graphs are on, with the evidence lines that say so."""

    backend: str
    state: State
    captured_batch_sizes: tuple[int, ...] = ()
    mode: str | None = None
    evidence: tuple[Evidence, ...] = ()
    notes: tuple[str, ...] = ()
    padded: bool = False  # a batch runs on the next larger captured graph (vLLM; TRT-LLM enable_padding)
    on_demand: bool = False  # graphs captured lazily per batch shape (TensorRT C++ runtime)
    replay_counts: tuple[tuple[str, int], ...] = ()  # runtime mode -> steps (vLLM --cudagraph-metrics)

    def covers(self, batch_size: int) -> bool:
        """Whether a decode batch of this size runs on a captured graph."""
        if self.state not in ("on", "partial", "downgraded") or self.mode == "NONE":
            return False
        if self.on_demand:
            return True
        if batch_size in self.captured_batch_sizes:
            return True
        return self.padded and any(s >= batch_size for s in self.captured_batch_sizes)

    def uncovered(self, batch_sizes: Iterable[int]) -> tuple[int, ...]:
        return tuple(b for b in batch_sizes if not self.covers(b))

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "state": self.state,
            "mode": self.mode,
            "captured_batch_sizes": list(self.captured_batch_sizes),
            "padded": self.padded,
            "on_demand": self.on_demand,
            "replay_counts": dict(self.replay_counts),
            "evidence": [e.to_dict() for e in self.evidence],
            "notes": list(self.notes),
        }

    def render(self) -> str:
        """Multi-line explanation: state, mode, sizes, every evidence line, notes."""
        head = f"CUDA graphs ({self.backend}): {self.state}"
        if self.mode:
            head += f", mode {self.mode}"
        if self.on_demand:
            head += ", captured on demand"
        elif self.captured_batch_sizes:
            head += f", sizes {_brief_sizes(self.captured_batch_sizes)}" + (" (padded)" if self.padded else "")
        if self.replay_counts:
            head += ", replays " + ", ".join(f"{m}={n}" for m, n in self.replay_counts)
        out = [head, "evidence:"]
        out += [f"  {e}" for e in self.evidence] or ["  (none: no line about CUDA graphs was found)"]
        out += ["notes:"] + [f"  - {n}" for n in self.notes] if self.notes else []
        return "\n".join(out)


# ---------------------------------------------------------------------------------- helpers
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def read_log(path: str | Path) -> str:
    """A log as text with its carriage returns kept, so line numbers match an editor's.

    `Path.read_text()` turns tqdm's carriage-return redraws into extra lines and shifts every later
    line number.
    """
    return Path(path).read_bytes().decode("utf-8", "replace")


def log_lines(text: str) -> list[str]:
    """Lines of a log without ANSI colour; tqdm's carriage-return redraws stay inside a line."""
    return [_ANSI.sub("", line).rstrip("\r") for line in text.split("\n")]


def clip(line: str, start: int | None = None, end: int | None = None, context: int = 70) -> str:
    """The line, or for a long line (vLLM's config dump) the matched span with context around it."""
    line = line.replace("\r", " ")
    if start is None or end is None or len(line) <= 2 * context + (end - start) + 40:
        return line.strip()
    lo, hi = max(0, start - context), min(len(line), end + context)
    return ("…" if lo else "") + line[lo:hi] + ("…" if hi < len(line) else "")


def search_lines(lines: list[str], pattern: re.Pattern[str]) -> list[tuple[int, str, re.Match[str]]]:
    """(line_no, line, match) for every line the pattern matches."""
    return [(i + 1, line, m) for i, line in enumerate(lines) if (m := pattern.search(line))]


def evidence_at(source: str, hit: tuple[int, str, re.Match[str]]) -> Evidence:
    """Evidence for a search_lines hit, clipped around the match on long lines."""
    line_no, line, m = hit
    return Evidence(source, line_no, clip(line, m.start(), m.end()))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text))


def format_sizes(sizes: Iterable[int]) -> str:
    """[1, 2, 3, 4, 8] -> '1..4, 8': long size lists stay readable in messages."""
    vals = sorted(set(sizes))
    parts, i = [], 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if j - i < 2 else f"{vals[i]}..{vals[j]}")
        parts.extend(str(v) for v in vals[i + 1 : j + 1] if j - i == 1)
        i = j + 1
    return "[" + ", ".join(parts) + "]"


def _brief_sizes(sizes: tuple[int, ...]) -> str:
    text = format_sizes(sizes)
    return text if len(sizes) <= 12 else f"{len(sizes)} from {min(sizes)} to {max(sizes)}"


def locate_key(text: str | None, path: str) -> tuple[int, str]:
    """(line_no, stripped line) of a YAML key given as a dotted path ('kv_cache_config.dtype'); (0, '') if absent."""
    lines = (text or "").splitlines()
    line_no, indent = 0, -1
    for key in path.split("."):
        pat = re.compile(rf"^(\s*){re.escape(key)}\s*:")
        for i in range(line_no, len(lines)):
            width = len(lines[i]) - len(lines[i].lstrip())
            if line_no and lines[i].strip() and not lines[i].lstrip().startswith("#") and width <= indent:
                return 0, ""  # left the parent's block without finding the child
            if (m := pat.match(lines[i])) and len(m[1]) > indent:
                line_no, indent = i + 1, len(m[1])
                break
        else:
            return 0, ""
    return (line_no, lines[line_no - 1].strip()) if line_no else (0, "")


# --------------------------------------------------------------------------------------- vLLM
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
            dump_mode = mm["name"] or _RAW_MODES.get(_ints(mm["raw"]), "NONE")
        elif _USE_CG in hits:  # vLLM <= 0.10: a boolean, piecewise graphs when true, full with full_cuda_graph
            full = _FULL_CG in hits and hits[_FULL_CG][2]["v"].lower() == "true"
            dump_mode = ("FULL" if full else "PIECEWISE") if hits[_USE_CG][2]["v"].lower() == "true" else "NONE"
        if _SIZES in hits:
            sizes = tuple(sorted(set(_ints(hits[_SIZES][2]["s"]))))
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
            if m := _BAR.search(seg):
                last_bar[m["kind"]] = (i + 1, seg, m)
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
    return _check_max_batch(verdict, max_batch_size)


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


def _check_max_batch(v: GraphVerdict, max_batch_size: int | None) -> GraphVerdict:
    if v.state != "on" or not max_batch_size or v.covers(max_batch_size):
        return v
    how = "padding on: no captured size is as large" if v.padded else "padding off: it is not in the list"
    note = (
        f"max batch size {max_batch_size} runs without a graph ({how}; captured "
        f"{format_sizes(v.captured_batch_sizes)}): the most common full batch runs eager"
    )
    return replace(v, state="partial", notes=(*v.notes, note))


# ------------------------------------------------------------------ trtllm-serve (PyTorch / TRT)
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
        return _engine_verdict(
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
        return _check_max_batch(v, max_batch_size)
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


# ---------------------------------------------------------------- Triton + TensorRT engines
_PARAM = re.compile(
    r'key\s*:\s*"(?P<key>[^"]+)"\s*,?\s*value\s*:?\s*\{\s*string_value\s*:\s*"(?P<val>[^"]*)"\s*\}', re.S
)
_NOT_SPECIFIED = re.compile(r"cuda_graph_mode is not specified")
_CACHE_NO_EFFECT = re.compile(r"cudaGraphCacheSize to a value greater than 0 without enabling cudaGraphMode")


def _strip_comment(line: str) -> str:
    quoted = False
    for i, ch in enumerate(line):
        quoted = quoted != (ch == '"')
        if ch == "#" and not quoted:
            return line[:i]
    return line


def pbtxt_parameters(text: str) -> dict[str, tuple[str, int]]:
    """`parameters` of a Triton config.pbtxt: key -> (string_value, line_no of the key); comments ignored."""
    clean = "\n".join(_strip_comment(line) for line in text.split("\n"))
    return {m["key"]: (m["val"], clean.count("\n", 0, m.start()) + 1) for m in _PARAM.finditer(clean)}


def pbtxt_bool(value: str | None) -> bool | Literal["invalid"] | None:
    """The backend's own bool parsing: None when unset or an unfilled ${template}, 'invalid' otherwise."""
    if value is None or value == "" or value.startswith("${"):
        return None
    if value in ("True", "true", "TRUE", "1"):
        return True
    if value in ("False", "false", "FALSE", "0"):
        return False
    return "invalid"


def param_evidence(source: str, params: Mapping[str, tuple[str, int]], key: str) -> Evidence:
    value, line_no = params[key]
    return Evidence(source, line_no, f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')


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
    return _engine_verdict("triton", flag, size, ev, notes)


def _engine_verdict(
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


def _as_bool(value: Any) -> bool | str | None:
    return pbtxt_bool(str(value)) if isinstance(value, (str, int)) and not isinstance(value, bool) else value


# --------------------------------------------------------------------------- dispatcher
def detect_cuda_graphs(
    kind: str,
    *,
    log_text: str | None = None,
    log_source: str = "server.log",
    options: Mapping[str, Any] | None = None,
    options_text: str | None = None,
    options_source: str = "extra_llm_api_options",
    config_pbtxt: str | None = None,
    config_source: str = "tensorrt_llm/config.pbtxt",
    max_batch_size: int | None = None,
    trtllm_backend: str = "pytorch",
) -> GraphVerdict:
    """One entry point per target kind (vllm | trtllm-serve | triton | openai)."""
    if kind == "vllm":
        return detect_vllm(log_text or "", source=log_source, max_batch_size=max_batch_size)
    if kind == "trtllm-serve":
        return detect_trtllm(
            options,
            log_text,
            backend=trtllm_backend,
            max_batch_size=max_batch_size,
            options_text=options_text,
            options_source=options_source,
            log_source=log_source,
        )
    if kind == "triton":
        if config_pbtxt is None:
            return GraphVerdict("triton", "unknown", notes=("no tensorrt_llm config.pbtxt was given",))
        return detect_triton(config_pbtxt, log_text, config_source=config_source, log_source=log_source)
    if kind == "openai":
        return GraphVerdict("openai", "unknown", notes=("external server: no log or config to read",))
    raise ValueError(f"unknown target kind {kind!r}; expected one of {', '.join(KINDS)}")
