"""trtllm-serve (TensorRT-LLM's OpenAI-compatible server), PyTorch or TensorRT-engine backend.

Command: `trtllm-serve MODEL --host --port --backend pytorch|tensorrt [--tokenizer] [--tp_size ...]
--extra_llm_api_options <yaml>` (flags read from tensorrt_llm/commands/serve.py; listed with the
source commit in tests/data/engines/cli_flags.json). `target.options` become the YAML file, which
"overwrites the parameters specified by trtllm-serve" (e.g. `cuda_graph_config`, `kv_cache_config`,
`return_perf_metrics`); TOML has no null, so the string "null" there is written as YAML null
(`cuda_graph_config = "null"` turns CUDA graphs off). `target.engine` holds the serving/build
facts; with `backend = "trt"` an engine is loaded (`engine.dir`) or built through the engine cache.

trtllm-serve has no --served_model_name: a local model directory is advertised under its
directory name, so the plan points it at `<workdir>/served/<model_name>`, a symlink to the model.
Readiness: `/health`, then `/health_generate` (a one-token generation). Prometheus text lives at
`/prometheus/metrics` only with `return_perf_metrics: true`; otherwise `/metrics` answers JSON
iteration stats. The server binds its own socket first and reports a taken port as
"Failed to bind socket to host:port".
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from ..checks.optimisations import OptimisationsReport
from ..checks.trtllm_evidence import trtllm_optimisations
from ..settings.config import Target
from ..engines import EngineError, EngineHandle, EngineSpec, detect_toolchain, prepare_engine
from ..engines.cache import verify_checkpoint_quantization
from ..engines.config import is_engine_dir
from ..settings.option_tables import backend_options
from .base import LaunchPlan, ServerHandle, ServerStartError
from .defaults import BackendDefaults
from .evidence_sources import engine_config, log_source, max_batch_size
from .probes import http_ok

DEFAULT_LAUNCHER = ("trtllm-serve",)
OPTIONS_FILE = "extra_llm_api_options.yaml"
_COLLISION = re.compile(r"Failed to bind socket|Address already in use|Errno 98")
# engine-table key -> trtllm-serve flag (pytorch backend: runtime limits; tensorrt: must match the engine)
_SERVE_FLAGS = {
    "tp": "--tp_size",
    "pp": "--pp_size",
    "ep": "--ep_size",
    "max_batch_size": "--max_batch_size",
    "max_num_tokens": "--max_num_tokens",
    "max_seq_len": "--max_seq_len",
    "max_beam_width": "--max_beam_width",
    "kv_cache_free_gpu_memory_fraction": "--kv_cache_free_gpu_memory_fraction",
}
_OWNED_FLAGS = ("--backend", "--host", "--port", "--extra_llm_api_options", "--config", "--tokenizer")


@dataclass(frozen=True)
class TrtllmServeBackend(BackendDefaults):
    kind: str = "trtllm-serve"
    engine_fn: Callable[[EngineSpec], EngineHandle] | None = None  # tests inject; default: prepare_engine

    def plan(self, target: Target, port: int, workdir: Path) -> LaunchPlan:
        try:
            spec = EngineSpec.from_table(target.engine, model=target.model, where=f"target {target.name!r} engine")
        except EngineError as exc:
            raise ServerStartError(str(exc)) from None
        for arg in target.args:
            if arg.split("=", 1)[0] in _OWNED_FLAGS:
                raise ServerStartError(
                    f"target {target.name!r}: args must not set {arg.split('=', 1)[0]} (the plugin sets it; "
                    "use engine.backend / options for the YAML / engine.tokenizer instead)"
                )
        model_path, tokenizer = self._model_and_tokenizer(target, spec)
        served = _served_path(target, model_path, workdir)
        base_url = f"http://127.0.0.1:{port}"
        argv = list(target.launcher or DEFAULT_LAUNCHER) + [
            served, "--host", "127.0.0.1", "--port", str(port), "--backend", spec.backend,
        ]
        if tokenizer:
            argv += ["--tokenizer", tokenizer]
        for key, flag in _SERVE_FLAGS.items():
            value = getattr(spec, key)
            if value is not None and not (key in ("tp", "pp") and value == 1):
                argv += [flag, str(value)]
        options = extra_options(target, spec)
        files: dict[Path, str] = {}
        if options:
            path = workdir / OPTIONS_FILE
            files[path] = to_yaml(options)
            argv += ["--extra_llm_api_options", str(path)]
        argv += list(target.args)
        perf = bool(options.get("return_perf_metrics"))
        return LaunchPlan(
            argv=argv,
            env={**os.environ, **target.env},
            base_url=base_url,
            probes=(http_ok("/health"), http_ok("/health_generate")),
            metrics_url=base_url + ("/prometheus/metrics" if perf else "/metrics"),
            cwd=workdir,
            files=files,
        )

    def is_port_collision(self, log_text: str) -> bool:
        return bool(_COLLISION.search(log_text))

    def optimisations(self, handle: ServerHandle) -> OptimisationsReport:
        """From the options it was given (the YAML), its log and the engine's config.json."""
        target = handle.target
        return trtllm_optimisations(
            backend_options(target),
            handle.log_text(),
            backend=str(target.engine.get("backend", "pytorch")) if target.engine else "pytorch",
            engine_config=engine_config(target),
            max_batch_size=max_batch_size(target),
            log_source=log_source(handle),
        )

    def _model_and_tokenizer(self, target: Target, spec: EngineSpec) -> tuple[str, str | None]:
        """What trtllm-serve serves (checkpoint or engine directory) and the tokenizer it needs."""
        model = str(target.model)
        try:
            if spec.backend == "pytorch":
                verify_checkpoint_quantization(spec)
                return model, str(spec.tokenizer) if spec.tokenizer else None
            if is_engine_dir(model):  # `model` itself is a prebuilt engine
                if spec.tokenizer is None:
                    raise EngineError(f"target {target.name!r}: model is an engine directory; set engine.tokenizer")
                handle = (self.engine_fn or _default_engine)(replace(spec, dir=Path(model)))
                return str(handle.path), str(spec.tokenizer)
            handle = (self.engine_fn or _default_engine)(spec)
            return str(handle.path), str(spec.tokenizer or model)
        except EngineError as exc:
            raise ServerStartError(f"target {target.name!r}: {exc}") from None


def extra_options(target: Target, spec: EngineSpec) -> dict[str, Any]:
    """The --extra_llm_api_options mapping: target.options less the suites' keys ("null" -> None) plus dtype
    (pytorch)."""
    options = {k: _nulls(v) for k, v in backend_options(target).items()}
    if spec.backend == "pytorch" and target.dtype and "dtype" not in options:
        options["dtype"] = target.dtype
    return options


def _default_engine(spec: EngineSpec) -> EngineHandle:
    return prepare_engine(spec, detect_toolchain)


def _served_path(target: Target, model_path: str, workdir: Path) -> str:
    """A path whose directory name is the served model name (trtllm-serve advertises dir names)."""
    name = target.model_name
    local = Path(model_path)
    if not local.is_dir():
        if model_path != name:
            raise ServerStartError(
                f"target {target.name!r}: trtllm-serve serves hub model {model_path!r} under that id and has no "
                f"--served_model_name; set served_model_name = {model_path!r} or download the model to a directory"
            )
        return model_path
    if local.name == name:
        return str(local)
    link = workdir / "served" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(local.resolve(), target_is_directory=True)
    return str(link)


def _nulls(value: Any) -> Any:
    if isinstance(value, str) and value == "null":
        return None
    if isinstance(value, Mapping):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulls(v) for v in value]
    return value


def to_yaml(data: Mapping[str, Any], indent: int = 0) -> str:
    """Block-style YAML for plain data, read back unchanged by trtllm-serve's `yaml.safe_load`.

    Hand-written to avoid a PyYAML dependency: strings are double-quoted with every character
    YAML would fold or reject escaped, floats always carry the '.' and exponent sign that PyYAML's
    YAML 1.1 resolver needs (json.dumps would write 1e-05, which PyYAML reads as a string).
    """
    lines: list[str] = []
    pad = " " * indent
    for key, value in data.items():
        k = _key(str(key))
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{k}:")
            lines.append(to_yaml(value, indent + 2).rstrip("\n"))
        elif isinstance(value, (list, tuple)) and value:
            lines.append(f"{pad}{k}:")
            for item in value:
                if isinstance(item, Mapping) and item:
                    body = to_yaml(item, indent + 4).rstrip("\n").splitlines()
                    lines.append(f"{pad}  - {body[0].lstrip()}")
                    lines.extend(body[1:])
                else:
                    lines.append(f"{pad}  - {_scalar(item)}")
        else:
            lines.append(f"{pad}{k}: {_scalar(value)}")
    return "\n".join(lines) + "\n"


_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _key(key: str) -> str:
    if _BARE_KEY.fullmatch(key) and key.lower() not in _YAML11_WORDS:
        return key
    return _quote(key)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        if "e" not in text:
            return text
        mantissa, exp = text.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        return f"{mantissa}e{exp[0] if exp[0] in '+-' else '+'}{exp.lstrip('+-')}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_quote(str(k))}: {_scalar(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return _quote(str(value))


def _quote(text: str) -> str:
    """A YAML double-quoted scalar; escapes what YAML rejects (non-printables) or folds (line breaks)."""
    out = ['"']
    for ch in text:
        o = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif o < 0x20 or 0x7F <= o <= 0x9F or o in (0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF) or 0xD800 <= o <= 0xDFFF:
            out.append(f"\\x{o:02x}" if o <= 0xFF else f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
