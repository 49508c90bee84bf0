"""TensorRT-LLM engines: read what an engine records, build or load one, cache builds by fingerprint.

    spec = EngineSpec.from_table(target.engine, model=target.model)
    handle = prepare_engine(spec, detect_toolchain)      # engine.dir, or the cache (built once)
    handle.path, handle.config.describe()
"""

from __future__ import annotations

from .build import BuildPlan, default_templates, expand, template_values
from .cache import (
    CACHE_ENV,
    MARKER,
    EngineCache,
    EngineHandle,
    default_cache_dir,
    load_engine,
    prepare_engine,
    verify_checkpoint_quantization,
)
from .config import (
    EngineConfig,
    EngineError,
    checkpoint_quantization,
    is_engine_dir,
    is_trtllm_checkpoint,
    legacy_quant_mode,
    parse_engine_config,
    read_engine_config,
)
from .fingerprint import Toolchain, checkpoint_digest, detect_toolchain, fingerprint, fingerprint_inputs
from .spec import ENGINE_KEYS, EngineSpec, mismatches

__all__ = [
    "CACHE_ENV",
    "ENGINE_KEYS",
    "MARKER",
    "BuildPlan",
    "EngineCache",
    "EngineConfig",
    "EngineError",
    "EngineHandle",
    "EngineSpec",
    "Toolchain",
    "checkpoint_digest",
    "checkpoint_quantization",
    "default_cache_dir",
    "default_templates",
    "detect_toolchain",
    "expand",
    "fingerprint",
    "fingerprint_inputs",
    "is_engine_dir",
    "is_trtllm_checkpoint",
    "legacy_quant_mode",
    "load_engine",
    "mismatches",
    "parse_engine_config",
    "prepare_engine",
    "read_engine_config",
    "template_values",
    "verify_checkpoint_quantization",
]
