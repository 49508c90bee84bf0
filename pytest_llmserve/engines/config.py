"""What a TensorRT-LLM engine directory records about its build: `config.json`, both layouts.

Layouts (read from TensorRT-LLM's own writers, see tests/data/engines/README.md):
* 0.9 and later (`Engine.save` / `EngineConfig.to_dict`): top-level `version`, `pretrained_config`
  (`architecture`, `dtype`, `mapping.{world_size,tp_size,pp_size}`, `quantization.{quant_algo,
  kv_cache_quant_algo}`) and `build_config` (`max_batch_size`, `max_input_len`, `max_seq_len`,
  `max_num_tokens`, `max_beam_width`, `plugin_config`).
* before 0.9 (`Builder.save_config` of `BuilderConfig.to_dict`): `builder_config` (`name`,
  `precision`, `tensor_parallel`, `pipeline_parallel`, `max_batch_size`, `max_input_len`,
  `max_output_len`, `quant_mode` bit mask) and a top-level `plugin_config`.
ModelOpt / Hugging Face checkpoints record quantisation in `hf_quant_config.json` or in
`config.json:quantization_config`; `checkpoint_quantization` reads both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, overload


class EngineError(Exception):
    """A problem with an engine or its build that the user can fix; the message says how."""


LAYOUT_CURRENT = "pretrained_config+build_config"
LAYOUT_LEGACY = "builder_config+plugin_config"

_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}

# QuantMode bits as laid out in tensorrt_llm/quantization/mode.py of the 0.6-0.8 releases, the last
# ones that wrote the legacy layout (0.5 lacked PER_GROUP, so its KV-cache bits sit one lower).
_QM_INT4_WEIGHTS, _QM_INT8_WEIGHTS, _QM_ACTIVATIONS = 1, 2, 4
_QM_PER_GROUP, _QM_INT8_KV, _QM_FP8_KV, _QM_FP8_QDQ = 32, 64, 128, 256


def normalize_dtype(value: Any) -> str | None:
    """'bf16' -> 'bfloat16' and so on; None stays None."""
    if value is None:
        return None
    text = str(value).strip().lower()
    return _DTYPE_ALIASES.get(text, text)


def normalize_quant(value: Any) -> str | None:
    """Quantisation algorithm names compare upper-case; none/null/'' mean no quantisation."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text.lower() in ("", "none", "null", "no_quant") else text.upper()


@dataclass(frozen=True)
class EngineConfig:
    """The build facts one engine directory records (None: the file does not say)."""

    layout: str
    version: str | None
    architecture: str | None
    dtype: str | None
    tp_size: int
    pp_size: int
    quant_algo: str | None
    kv_cache_quant_algo: str | None
    max_batch_size: int | None
    max_input_len: int | None
    max_seq_len: int | None
    max_num_tokens: int | None
    max_beam_width: int | None
    vocab_size: int | None
    plugins: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    def describe(self) -> str:
        quant = self.quant_algo or "no quant"
        kv = f", kv {self.kv_cache_quant_algo}" if self.kv_cache_quant_algo else ""
        return (f"{self.architecture or '?'} {self.dtype or '?'} ({quant}{kv}), tp{self.tp_size} pp{self.pp_size}, "
                f"max_batch_size={self.max_batch_size}, max_input_len={self.max_input_len}, "
                f"max_seq_len={self.max_seq_len} [{self.layout}]")


def read_engine_config(engine_dir: str | Path) -> EngineConfig:
    """Parse `<engine_dir>/config.json`; EngineError names the file and what is wrong."""
    path = Path(engine_dir) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineError(f"{path}: no config.json; is {engine_dir} a TensorRT-LLM engine directory?") from None
    except (OSError, ValueError) as exc:
        raise EngineError(f"{path}: cannot read engine config: {exc}") from None
    try:
        return parse_engine_config(data)
    except EngineError as exc:
        raise EngineError(f"{path}: {exc}") from None


def parse_engine_config(data: Any) -> EngineConfig:
    """Either layout of an engine config.json, already loaded as JSON."""
    if not isinstance(data, Mapping):
        raise EngineError("engine config must be a JSON object")
    if isinstance(data.get("pretrained_config"), Mapping) and isinstance(data.get("build_config"), Mapping):
        return _parse_current(data)
    if isinstance(data.get("builder_config"), Mapping):
        return _parse_legacy(data)
    raise EngineError(
        "not a TensorRT-LLM engine config: expected `pretrained_config` + `build_config` (0.9+) "
        f"or `builder_config` + `plugin_config` (older); found keys {sorted(data)}"
    )


def _parse_current(data: Mapping[str, Any]) -> EngineConfig:
    pre, build = data["pretrained_config"], data["build_config"]
    mapping = pre.get("mapping") if isinstance(pre.get("mapping"), Mapping) else {}
    quant = pre.get("quantization") if isinstance(pre.get("quantization"), Mapping) else {}
    plugins = build.get("plugin_config") if isinstance(build.get("plugin_config"), Mapping) else {}
    return EngineConfig(
        layout=LAYOUT_CURRENT,
        version=_str(data.get("version")),
        architecture=_str(pre.get("architecture")),
        dtype=normalize_dtype(pre.get("dtype")),
        tp_size=_int(mapping.get("tp_size"), 1),
        pp_size=_int(mapping.get("pp_size"), 1),
        quant_algo=normalize_quant(quant.get("quant_algo")),
        kv_cache_quant_algo=normalize_quant(quant.get("kv_cache_quant_algo")),
        max_batch_size=_int(build.get("max_batch_size")),
        max_input_len=_int(build.get("max_input_len")),
        max_seq_len=_int(build.get("max_seq_len")),
        max_num_tokens=_int(build.get("max_num_tokens")),
        max_beam_width=_int(build.get("max_beam_width")),
        vocab_size=_int(pre.get("vocab_size")),
        plugins=dict(plugins),
        raw=data,
    )


def _parse_legacy(data: Mapping[str, Any]) -> EngineConfig:
    builder, plugin_config = data["builder_config"], data.get("plugin_config")
    plugins = plugin_config if isinstance(plugin_config, Mapping) else {}
    quant_algo, kv_algo = legacy_quant_mode(_int(builder.get("quant_mode"), 0) or 0)
    max_input, max_output = _int(builder.get("max_input_len")), _int(builder.get("max_output_len"))
    return EngineConfig(
        layout=LAYOUT_LEGACY,
        version=_str(data.get("version")),
        architecture=_str(builder.get("name")),
        dtype=normalize_dtype(builder.get("precision")),
        tp_size=_int(builder.get("tensor_parallel"), 1),
        pp_size=_int(builder.get("pipeline_parallel"), 1),
        quant_algo=quant_algo,
        kv_cache_quant_algo=kv_algo,
        max_batch_size=_int(builder.get("max_batch_size")),
        max_input_len=max_input,
        # these engines record input and output budgets separately; their sum bounds a sequence
        max_seq_len=max_input + max_output if max_input is not None and max_output is not None else None,
        max_num_tokens=_int(builder.get("max_num_tokens")),
        max_beam_width=_int(builder.get("max_beam_width")),
        vocab_size=_int(builder.get("vocab_size")),
        plugins=dict(plugins),
        raw=data,
    )


def legacy_quant_mode(bits: int) -> tuple[str | None, str | None]:
    """(quant_algo, kv_cache_quant_algo) named like 0.9+ engines, from a pre-0.9 `quant_mode` mask.

    Only unambiguous cases are named; any other weight/activation combination comes back as
    'LEGACY_QUANT_MODE_<n>' so that a comparison with a requested algorithm fails visibly.
    """
    kv = "FP8" if bits & _QM_FP8_KV else ("INT8" if bits & _QM_INT8_KV else None)
    weights = bits & (_QM_INT4_WEIGHTS | _QM_INT8_WEIGHTS | _QM_ACTIVATIONS | _QM_PER_GROUP | _QM_FP8_QDQ)
    if weights == 0:
        return None, kv
    if weights == _QM_FP8_QDQ:
        return "FP8", kv
    if weights == _QM_INT8_WEIGHTS:
        return "W8A16", kv
    if weights == _QM_INT4_WEIGHTS:
        return "W4A16", kv
    return f"LEGACY_QUANT_MODE_{bits}", kv


def checkpoint_quantization(checkpoint: str | Path) -> tuple[str | None, str | None]:
    """(quant_algo, kv_cache_quant_algo) a Hugging Face / ModelOpt checkpoint declares, else (None, None)."""
    root = Path(checkpoint)
    modelopt = root / "hf_quant_config.json"
    if modelopt.is_file():
        quant = _load(modelopt).get("quantization", {})
        if isinstance(quant, Mapping):
            return normalize_quant(quant.get("quant_algo")), normalize_quant(quant.get("kv_cache_quant_algo"))
    cfg = root / "config.json"
    if cfg.is_file():
        qc = _load(cfg).get("quantization_config")
        if isinstance(qc, Mapping):
            algo = qc.get("quant_algo") or qc.get("quant_method")
            return normalize_quant(algo), normalize_quant(qc.get("kv_cache_quant_algo"))
    return None, None


def is_trtllm_checkpoint(path: str | Path) -> bool:
    """A converted TensorRT-LLM checkpoint (config.json with `architecture` and `mapping`), not an HF one."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    data = _load(cfg)
    return "architecture" in data and "mapping" in data and "pretrained_config" not in data


def is_engine_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and any(p.glob("*.engine"))


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EngineError(f"{path}: cannot read JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


@overload
def _int(value: Any) -> int | None: ...
@overload
def _int(value: Any, default: int) -> int: ...
def _int(value: Any, default: int | None = None) -> int | None:
    if isinstance(value, bool) or value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
