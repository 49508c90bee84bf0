"""What precision a target really runs, read from what the engine itself recorded or logged.

Accuracy references are keyed by dtype, weight quantization and KV-cache quantization (as in
TensorRT-LLM's accuracy_core, which takes them from `llm.args`), so the key must come from the
engine, not from what the test author believes was configured. Sources, most direct first:

- vLLM: the engine's startup config dump, "Initializing a V1 LLM engine (vX) with config: ...
  dtype=torch.bfloat16, ... quantization=None, ... kv_cache_dtype=fp8, ...".
- TensorRT-LLM engine directory `config.json`: `pretrained_config.dtype` and
  `pretrained_config.quantization.{quant_algo,kv_cache_quant_algo}`; pre-0.9 engines:
  `builder_config.precision` and the `builder_config.quant_mode` bit flags.
- ModelOpt checkpoints: `hf_quant_config.json` `quantization.{quant_algo,kv_cache_quant_algo}`.
- Last resort, a declaration in the target config: `options = { precision = { dtype = "bfloat16",
  quant_algo = "fp8", kv_cache_quant_algo = "fp8" } }` (source "declared").

Names are normalised to lower case (`FP8` and `fp8` are one key); "no quantization" is None.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..servers.registry import backend_for

ENGINE_CONFIG = "config.json"
MODELOPT_CONFIG = "hf_quant_config.json"
VLLM_CONFIG_LINE = re.compile(r"Initializing a V1 LLM engine \(v?([^)]*)\) with config: (.*)")
# `(?<![\w.])` keeps `dtype=` from matching inside `kv_cache_dtype=` or `model_config.dtype=`.
_VLLM_FIELD = {
    "dtype": re.compile(r"(?<![\w.])dtype=([\w.]+)"),
    "quantization": re.compile(r"(?<![\w.])quantization=([\w.\-]+)"),
    "kv_cache_dtype": re.compile(r"(?<![\w.])kv_cache_dtype=([\w.\-]+)"),
}
_DTYPE_ALIASES = {
    "bf16": "bfloat16", "half": "float16", "fp16": "float16", "float": "float32", "fp32": "float32",
    "torch.bfloat16": "bfloat16", "torch.float16": "float16", "torch.float32": "float32",
}
# A KV cache stored in a plain float dtype is not quantized (vLLM `auto` = the model dtype).
_UNQUANTIZED = {"", "none", "null", "auto", "bfloat16", "float16", "float32", "bf16", "fp16", "fp32", "half", "float"}
# vLLM documents `fp8` as an alias of `fp8_e4m3` (the format TensorRT-LLM calls FP8).
_ALGO_ALIASES = {"fp8_e4m3": "fp8"}

# TensorRT-LLM 0.5-0.8 QuantMode bit flags (tensorrt_llm/quantization/mode.py of those releases).
_QM_INT4_WEIGHTS, _QM_INT8_WEIGHTS, _QM_ACTIVATIONS = 1, 2, 4
_QM_PER_GROUP, _QM_INT8_KV, _QM_FP8_KV, _QM_FP8_QDQ = 32, 64, 128, 256


class PrecisionUnknown(Exception):
    """No source said what precision the target runs; the message says how to provide one."""


@dataclass(frozen=True, slots=True)
class PrecisionInfo:
    """The numeric precision a target runs, with where it was read and the text that said so."""

    dtype: str
    quant_algo: str | None
    kv_cache_quant_algo: str | None
    source: str  # vllm-log | trtllm-engine | trtllm-engine-pre0.9 | modelopt | declared
    evidence: str

    def key(self) -> str:
        """`dtype|quant_algo|kv_cache_quant_algo`, with "none" for no quantization."""
        return "|".join((self.dtype, self.quant_algo or "none", self.kv_cache_quant_algo or "none"))

    def describe(self) -> str:
        return f"{self.key()} (from {self.source}: {self.evidence})"


def normalize_dtype(value: Any) -> str:
    """`torch.bfloat16`, `bf16`, `BFloat16` -> `bfloat16`; unknown names are lower-cased as they are."""
    text = str(value).strip().lower()
    return _DTYPE_ALIASES.get(text, text.removeprefix("torch."))


def normalize_algo(value: Any) -> str | None:
    """A quantization name in lower case, or None when it means "not quantized"."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in _UNQUANTIZED:
        return None
    return _ALGO_ALIASES.get(text, text)


def from_vllm_log(log_text: str, model_dir: str | Path | None = None) -> PrecisionInfo:
    """Read the last vLLM engine config dump in a server log.

    When vLLM reports a ModelOpt checkpoint (`quantization=modelopt...`) and the model directory
    has `hf_quant_config.json`, its `quant_algo` (e.g. FP8, NVFP4) names the algorithm instead.
    """
    lines = [m for m in VLLM_CONFIG_LINE.finditer(log_text)]
    if not lines:
        raise PrecisionUnknown(
            "the vLLM log has no 'Initializing a V1 LLM engine (...) with config:' line; the server may "
            "not have started, or its log level hides INFO (unset VLLM_LOGGING_LEVEL or set it to INFO)"
        )
    version, dump = lines[-1].group(1), lines[-1].group(2)
    found: dict[str, str] = {}
    for name, pattern in _VLLM_FIELD.items():
        match = pattern.search(dump)
        if match is None:
            raise PrecisionUnknown(f"vLLM {version} config dump has no `{name}=` field; dump starts: {dump[:200]!r}")
        found[name] = match.group(1)
    quant = normalize_algo(found["quantization"])
    evidence = f"vLLM v{version}: dtype={found['dtype']}, quantization={found['quantization']}, kv_cache_dtype={found['kv_cache_dtype']}"
    if quant is not None and quant.startswith("modelopt") and model_dir is not None:
        modelopt = _read_json(Path(model_dir) / MODELOPT_CONFIG)
        algo = normalize_algo((modelopt or {}).get("quantization", {}).get("quant_algo"))
        if algo is not None:
            quant = algo
            evidence += f"; {MODELOPT_CONFIG} quant_algo={algo.upper()}"
    return PrecisionInfo(normalize_dtype(found["dtype"]), quant, normalize_algo(found["kv_cache_dtype"]), "vllm-log", evidence)


def from_engine_config(config: Mapping[str, Any], where: str = ENGINE_CONFIG) -> PrecisionInfo:
    """Read a TensorRT-LLM engine `config.json` (0.9+ `pretrained_config`, or pre-0.9 `builder_config`)."""
    pretrained = config.get("pretrained_config")
    if isinstance(pretrained, Mapping) and "dtype" in pretrained:
        quant = pretrained.get("quantization") or {}
        algo, kv = quant.get("quant_algo"), quant.get("kv_cache_quant_algo")
        evidence = f"{where}: pretrained_config.dtype={pretrained['dtype']}, quant_algo={algo}, kv_cache_quant_algo={kv}"
        return PrecisionInfo(normalize_dtype(pretrained["dtype"]), normalize_algo(algo), normalize_algo(kv),
                             "trtllm-engine", evidence)
    builder = config.get("builder_config")
    if isinstance(builder, Mapping) and "precision" in builder:
        mode = int(builder.get("quant_mode") or 0)
        algo, kv = _decode_quant_mode(mode)
        evidence = f"{where}: builder_config.precision={builder['precision']}, quant_mode={mode}"
        return PrecisionInfo(normalize_dtype(builder["precision"]), algo, kv, "trtllm-engine-pre0.9", evidence)
    raise PrecisionUnknown(
        f"{where} has neither pretrained_config.dtype (TensorRT-LLM >= 0.9) nor builder_config.precision "
        "(older engines): is this an engine directory?"
    )


def _decode_quant_mode(mode: int) -> tuple[str | None, str | None]:
    """Weight/activation and KV-cache algorithms from a pre-0.9 QuantMode integer."""
    if mode & _QM_FP8_QDQ:
        algo: str | None = "fp8"
    elif mode & _QM_INT8_WEIGHTS and mode & _QM_ACTIVATIONS:
        algo = "w8a8_sq"
    elif mode & _QM_INT4_WEIGHTS:
        algo = "w4a16_groupwise" if mode & _QM_PER_GROUP else "w4a16"
    elif mode & _QM_INT8_WEIGHTS:
        algo = "w8a16"
    else:
        algo = None
    kv = "fp8" if mode & _QM_FP8_KV else ("int8" if mode & _QM_INT8_KV else None)
    return algo, kv


def from_modelopt_config(config: Mapping[str, Any], dtype: str, where: str = MODELOPT_CONFIG) -> PrecisionInfo:
    """Read a ModelOpt `hf_quant_config.json`; it names no compute dtype, so the caller supplies one."""
    quant = config.get("quantization")
    if not isinstance(quant, Mapping):
        raise PrecisionUnknown(f"{where} has no `quantization` table (expected ModelOpt's hf_quant_config.json)")
    algo, kv = quant.get("quant_algo"), quant.get("kv_cache_quant_algo")
    return PrecisionInfo(normalize_dtype(dtype), normalize_algo(algo), normalize_algo(kv), "modelopt",
                         f"{where}: quant_algo={algo}, kv_cache_quant_algo={kv}")


def from_model_dir(path: str | Path, dtype: str | None = None) -> PrecisionInfo:
    """An engine directory's config.json, else a ModelOpt checkpoint's hf_quant_config.json."""
    root = Path(path)
    engine = _read_json(root / ENGINE_CONFIG)
    if engine is not None and ("pretrained_config" in engine or "builder_config" in engine):
        return from_engine_config(engine, str(root / ENGINE_CONFIG))
    modelopt = _read_json(root / MODELOPT_CONFIG)
    if modelopt is not None:
        hf_dtype = dtype or (engine or {}).get("torch_dtype") or (engine or {}).get("dtype")
        if hf_dtype is None:
            raise PrecisionUnknown(f"{root / MODELOPT_CONFIG} names no compute dtype; set the target's `dtype`")
        return from_modelopt_config(modelopt, hf_dtype, str(root / MODELOPT_CONFIG))
    raise PrecisionUnknown(f"{root} holds neither a TensorRT-LLM engine config.json nor {MODELOPT_CONFIG}")


def from_declaration(declared: Mapping[str, Any], where: str) -> PrecisionInfo:
    """The user's own statement (`options.precision`), used only when the engine cannot be read."""
    if "dtype" not in declared:
        raise PrecisionUnknown(f"{where}: options.precision needs at least `dtype` (e.g. \"bfloat16\")")
    return PrecisionInfo(normalize_dtype(declared["dtype"]), normalize_algo(declared.get("quant_algo")),
                         normalize_algo(declared.get("kv_cache_quant_algo")), "declared",
                         f"{where}: options.precision={dict(declared)}")


def precision_of(target: Any, log_text: str = "") -> PrecisionInfo:
    """What `target` (a config.Target) runs: its server log (where its backend reads one: vLLM), its
    model/engine dir, or its declaration."""
    tried: list[str] = []
    if log_text:
        try:
            info = backend_for(target.kind).precision_from_log(target, log_text)
        except PrecisionUnknown as exc:
            tried.append(str(exc))
        else:
            if info is not None:
                return info
    candidates = [target.engine.get("dir"), target.engine.get("engine_dir"), target.model]
    for candidate in (c for c in candidates if isinstance(c, str) and c):
        if Path(candidate).is_dir():
            try:
                return from_model_dir(candidate, target.dtype)
            except PrecisionUnknown as exc:
                tried.append(str(exc))
    declared = target.options.get("precision")
    if isinstance(declared, Mapping):
        return from_declaration(declared, f"target {target.name!r} ({target.source})")
    raise PrecisionUnknown(
        f"cannot tell what precision target {target.name!r} runs ({'; '.join(tried) or 'no server log or model directory'}). "
        "Declare it in the target: options = { precision = { dtype = \"bfloat16\", quant_algo = \"fp8\", "
        "kv_cache_quant_algo = \"fp8\" } }"
    )


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except ValueError as exc:
        raise PrecisionUnknown(f"{path} is not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else None
