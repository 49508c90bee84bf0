"""What a target asks of its engine (`EngineSpec`), read from its `engine` table, and how to tell
whether an engine's recorded build is what was asked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config import EngineConfig, EngineError, normalize_dtype, normalize_quant

BACKENDS = ("pytorch", "tensorrt")
BUILDERS = ("auto", "cli", "llmapi")
# engine-table keys: build facts, plus how to build/serve; anything else is a typo worth stopping for
ENGINE_KEYS = {
    "backend": "pytorch | trt | tensorrt (trtllm-serve --backend)",
    "dir": "an already-built engine directory (no build)",
    "checkpoint": "build source when it differs from `model` (HF or converted TensorRT-LLM checkpoint)",
    "dtype": "bfloat16 | float16 | float32 | auto, or fp8 (= quantization FP8)",
    "quantization": "quant_algo, e.g. FP8, W8A16, NVFP4",
    "kv_cache_quantization": "kv_cache_quant_algo, e.g. FP8, INT8",
    "tp": "tensor parallel size",
    "pp": "pipeline parallel size",
    "ep": "expert parallel size (pytorch backend only)",
    "max_batch_size": "int",
    "max_input_len": "int",
    "max_seq_len": "int",
    "max_num_tokens": "int",
    "max_beam_width": "int",
    "kv_cache_free_gpu_memory_fraction": "float (trtllm-serve flag)",
    "plugins": "table of trtllm-build plugin flags, e.g. { gemm_plugin = 'auto' }",
    "builder": "auto | cli (convert_checkpoint.py + trtllm-build) | llmapi (LLM API build)",
    "convert_script": "path to examples/models/core/<model>/convert_checkpoint.py (cli builder)",
    "build_args": "extra trtllm-build arguments (list of strings)",
    "build_timeout_s": "seconds per build command (default 3600)",
    "cache_dir": "engine cache directory (default $LLMSERVE_ENGINE_CACHE or ~/.cache/pytest-llmserve/engines)",
    "tokenizer": "tokenizer directory when `model` is an engine directory",
}
_INT_KEYS = ("tp", "pp", "ep", "max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "max_beam_width")


@dataclass(frozen=True)
class EngineSpec:
    """The build a target asks for; None fields are not asked (not checked, not fingerprinted)."""

    checkpoint: Path | None = None
    dir: Path | None = None
    backend: str = "pytorch"
    dtype: str | None = None
    quant_algo: str | None = None
    kv_cache_quant_algo: str | None = None
    tp: int = 1
    pp: int = 1
    ep: int | None = None
    max_batch_size: int | None = None
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_num_tokens: int | None = None
    max_beam_width: int | None = None
    kv_cache_free_gpu_memory_fraction: float | None = None
    plugins: Mapping[str, Any] = field(default_factory=dict)
    builder: str = "auto"
    convert_script: Path | None = None
    build_args: tuple[str, ...] = ()
    build_timeout_s: float = 3600.0
    cache_dir: Path | None = None
    tokenizer: Path | None = None

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @classmethod
    def from_table(cls, table: Mapping[str, Any], model: str | None = None, where: str = "engine") -> EngineSpec:
        """Validate a target's `engine` table; errors name the key, the value and what is accepted."""
        for key in table:
            if key not in ENGINE_KEYS:
                allowed = ", ".join(sorted(ENGINE_KEYS))
                raise EngineError(f"{where}.{key}: unknown key; allowed: {allowed}")
        for key in _INT_KEYS:
            value = table.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise EngineError(f"{where}.{key} = {value!r}: must be an integer >= 1")
        backend = str(table.get("backend", "pytorch")).lower()
        backend = "tensorrt" if backend == "trt" else backend
        if backend not in BACKENDS:
            raise EngineError(f"{where}.backend = {table['backend']!r}: use pytorch, trt or tensorrt")
        builder = str(table.get("builder", "auto")).lower()
        if builder not in BUILDERS:
            raise EngineError(f"{where}.builder = {table['builder']!r}: use auto, cli or llmapi")
        dtype = normalize_dtype(table.get("dtype"))
        quant = normalize_quant(table.get("quantization"))
        if dtype in ("fp8", "float8"):
            # `dtype = "fp8"` is shorthand for FP8 weights/activations over the checkpoint's own dtype
            if quant not in (None, "FP8"):
                raise EngineError(f"{where}: dtype = 'fp8' conflicts with quantization = {quant!r}")
            dtype, quant = None, "FP8"
        plugins = table.get("plugins", {})
        if not isinstance(plugins, Mapping):
            raise EngineError(f"{where}.plugins = {plugins!r}: must be a table such as {{ gemm_plugin = 'auto' }}")
        build_args = table.get("build_args", [])
        if not isinstance(build_args, (list, tuple)) or not all(isinstance(a, str) for a in build_args):
            raise EngineError(f"{where}.build_args = {build_args!r}: must be a list of strings")
        source = table.get("checkpoint", model)
        fraction = table.get("kv_cache_free_gpu_memory_fraction")
        if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise EngineError(f"{where}.kv_cache_free_gpu_memory_fraction = {fraction!r}: must be in (0, 1]")
        return cls(
            checkpoint=Path(source) if source else None,
            dir=Path(table["dir"]) if table.get("dir") else None,
            backend=backend,
            dtype=dtype,
            quant_algo=quant,
            kv_cache_quant_algo=normalize_quant(table.get("kv_cache_quantization")),
            tp=table.get("tp", 1),
            pp=table.get("pp", 1),
            ep=table.get("ep"),
            max_batch_size=table.get("max_batch_size"),
            max_input_len=table.get("max_input_len"),
            max_seq_len=table.get("max_seq_len"),
            max_num_tokens=table.get("max_num_tokens"),
            max_beam_width=table.get("max_beam_width"),
            kv_cache_free_gpu_memory_fraction=float(fraction) if fraction is not None else None,
            plugins={str(k): v for k, v in plugins.items()},
            builder=builder,
            convert_script=Path(table["convert_script"]) if table.get("convert_script") else None,
            build_args=tuple(build_args),
            build_timeout_s=float(table.get("build_timeout_s", 3600.0)),
            cache_dir=Path(table["cache_dir"]).expanduser() if table.get("cache_dir") else None,
            tokenizer=Path(table["tokenizer"]) if table.get("tokenizer") else None,
        )

    def build_facts(self) -> dict[str, Any]:
        """The asked-for facts that decide what an engine is (fingerprint inputs and checks)."""
        return {
            "dtype": self.dtype,
            "quant_algo": self.quant_algo,
            "kv_cache_quant_algo": self.kv_cache_quant_algo,
            "tp": self.tp,
            "pp": self.pp,
            "max_batch_size": self.max_batch_size,
            "max_input_len": self.max_input_len,
            "max_seq_len": self.max_seq_len,
            "max_num_tokens": self.max_num_tokens,
            "max_beam_width": self.max_beam_width,
            "plugins": {k: _plugin_value(v) for k, v in sorted(self.plugins.items())},
        }


def mismatches(spec: EngineSpec, config: EngineConfig) -> list[str]:
    """Every asked-for fact the engine records differently, as 'field: asked X, engine records Y'."""
    out: list[str] = []

    def check(name: str, asked: Any, recorded: Any) -> None:
        if asked is not None and asked != recorded:
            out.append(f"{name}: asked {asked!r}, engine records {recorded!r}")

    dtype = normalize_dtype(spec.dtype)
    if dtype not in (None, "auto"):
        check("dtype", dtype, config.dtype)
    # quantisation is always checked: asking for none must not accept an FP8 engine
    check("quant_algo", normalize_quant(spec.quant_algo) or "none", config.quant_algo or "none")
    check("kv_cache_quant_algo", normalize_quant(spec.kv_cache_quant_algo) or "none", config.kv_cache_quant_algo or "none")
    check("tp", spec.tp, config.tp_size)
    check("pp", spec.pp, config.pp_size)
    for name in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "max_beam_width"):
        check(name, getattr(spec, name), getattr(config, name))
    for plugin, asked in sorted(spec.plugins.items()):
        recorded = config.plugins.get(plugin, "(not recorded)")
        if not _plugin_matches(_plugin_value(asked), recorded):
            out.append(f"plugins.{plugin}: asked {asked!r}, engine records {recorded!r}")
    return out


def _plugin_value(value: Any) -> Any:
    """trtllm-build takes enable/disable strings; config.json records booleans or dtypes or null."""
    if isinstance(value, str):
        low = value.lower()
        if low in ("enable", "true"):
            return True
        if low in ("disable", "false", "none", "null"):
            return False
        return normalize_dtype(low)
    return False if value is None else value


def _plugin_matches(asked: Any, recorded: Any) -> bool:
    if recorded == "(not recorded)":
        return False
    rec = _plugin_value(recorded)
    if asked == "auto":  # gemm_plugin=auto resolves to the model dtype at build time
        return rec not in (False, None)
    if asked is True:
        return rec not in (False, None)
    return asked == rec
