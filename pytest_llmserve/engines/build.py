"""Build commands as argv templates, expanded per build and run one after another.

A template is a list of strings. `{name}` inside a string is replaced by a value; an element that
is exactly `{*name}` is replaced by a list of arguments (possibly empty). Values: python, checkpoint,
output_dir, work_dir, dtype, tp, pp, world_size, max_batch_size, max_input_len, max_seq_len,
max_num_tokens, max_beam_width, convert_script; lists: limit_args, plugin_args, build_args,
convert_quant_args, llmapi_quant_args. Tests inject a stand-in command through the same templates.

Flags come from TensorRT-LLM's own parsers (tests/data/engines/cli_flags.json names the files):
`trtllm-build` (tensorrt_llm/commands/build.py + plugin.add_plugin_argument) and
`convert_checkpoint.py` (examples/models/core/llama/convert_checkpoint.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..servers.process import read_tail
from .config import EngineError, is_trtllm_checkpoint
from .spec import EngineSpec

ArgvTemplate = Sequence[str]

CONVERT_TEMPLATE: tuple[str, ...] = (
    "{python}", "{convert_script}", "--model_dir", "{checkpoint}", "--output_dir", "{work_dir}/tllm_checkpoint",
    "--dtype", "{dtype}", "--tp_size", "{tp}", "--pp_size", "{pp}", "{*convert_quant_args}",
)
TRTLLM_BUILD_TEMPLATE: tuple[str, ...] = (
    "trtllm-build", "--checkpoint_dir", "{trtllm_checkpoint}", "--output_dir", "{output_dir}",
    "{*limit_args}", "{*plugin_args}", "--workers", "{world_size}", "{*build_args}",
)
LLMAPI_TEMPLATE: tuple[str, ...] = (
    "{python}", "-m", "pytest_llmserve.engines.llmapi_build", "--model", "{checkpoint}", "--output_dir",
    "{output_dir}", "--dtype", "{dtype}", "--tp_size", "{tp}", "--pp_size", "{pp}", "{*limit_args}",
    "{*llmapi_quant_args}",
)

# convert_checkpoint.py flags per quant_algo / kv_cache_quant_algo (argparse in the llama example)
_CONVERT_QUANT = {
    "FP8": ["--use_fp8"],
    "FP8_PER_CHANNEL_PER_TOKEN": ["--use_fp8_rowwise"],
    "NVFP4": ["--use_nvfp4"],
    "W8A16": ["--use_weight_only", "--weight_only_precision", "int8"],
    "W4A16": ["--use_weight_only", "--weight_only_precision", "int4"],
}
_CONVERT_KV = {"FP8": ["--fp8_kv_cache"], "INT8": ["--int8_kv_cache"]}
_LIMITS = ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "max_beam_width")


@dataclass(frozen=True)
class BuildPlan:
    """The expanded commands of one build (what will run, in order)."""

    commands: tuple[tuple[str, ...], ...]

    def describe(self) -> str:
        return "\n".join("$ " + " ".join(c) for c in self.commands)


def default_templates(spec: EngineSpec) -> list[tuple[str, ...]]:
    """cli: [convert_checkpoint.py,] trtllm-build; llmapi: the LLM API builder (HF checkpoints)."""
    converted = spec.checkpoint is not None and is_trtllm_checkpoint(spec.checkpoint)
    builder = spec.builder
    if builder == "auto":
        builder = "cli" if (converted or spec.convert_script) else "llmapi"
    if builder == "llmapi":
        if converted:
            raise EngineError(f"{spec.checkpoint} is a converted TensorRT-LLM checkpoint: use builder = 'cli'")
        return [LLMAPI_TEMPLATE]
    if converted:
        return [TRTLLM_BUILD_TEMPLATE]
    if spec.convert_script is None:
        raise EngineError(
            "builder 'cli' needs engine.convert_script (TensorRT-LLM's examples/models/core/<model>/"
            "convert_checkpoint.py) for a Hugging Face checkpoint, or use builder = 'llmapi'"
        )
    return [CONVERT_TEMPLATE, TRTLLM_BUILD_TEMPLATE]


def template_values(spec: EngineSpec, output_dir: Path, work_dir: Path) -> dict[str, Any]:
    """Scalars and argument lists the templates may refer to."""
    if spec.checkpoint is None:
        raise EngineError("no checkpoint to build from: set the target's `model` (or engine.checkpoint)")
    converted = is_trtllm_checkpoint(spec.checkpoint)
    limit_args: list[str] = []
    for name in _LIMITS:
        value = getattr(spec, name)
        if value is not None:
            limit_args += [f"--{name}", str(value)]
    plugin_args: list[str] = []
    for name, value in sorted(spec.plugins.items()):
        plugin_args += [f"--{name}", _plugin_arg(value)]
    quant = spec.quant_algo
    convert_quant = list(_CONVERT_QUANT.get(quant, [])) if quant else []  # unsupported: check_quantization_supported
    if spec.kv_cache_quant_algo:
        convert_quant += _CONVERT_KV.get(spec.kv_cache_quant_algo, [])
    llmapi_quant: list[str] = []
    if quant:
        llmapi_quant += ["--quant_algo", quant]
    if spec.kv_cache_quant_algo:
        llmapi_quant += ["--kv_cache_quant_algo", spec.kv_cache_quant_algo]
    return {
        "python": sys.executable,
        "checkpoint": str(spec.checkpoint),
        "trtllm_checkpoint": str(spec.checkpoint) if converted else f"{work_dir}/tllm_checkpoint",
        "output_dir": str(output_dir),
        "work_dir": str(work_dir),
        "dtype": spec.dtype or "auto",
        "tp": spec.tp,
        "pp": spec.pp,
        "world_size": spec.world_size,
        **{name: getattr(spec, name) for name in _LIMITS},
        "convert_script": str(spec.convert_script) if spec.convert_script else "",
        "limit_args": limit_args,
        "plugin_args": plugin_args,
        "build_args": list(spec.build_args),
        "convert_quant_args": convert_quant,
        "llmapi_quant_args": llmapi_quant,
    }


def check_quantization_supported(spec: EngineSpec, templates: Sequence[ArgvTemplate]) -> None:
    """convert_checkpoint.py cannot produce every algorithm; say so before spending a build on it."""
    uses_convert = any("{*convert_quant_args}" in t for t in templates)
    if not uses_convert:
        return
    if spec.quant_algo and spec.quant_algo not in _CONVERT_QUANT:
        raise EngineError(
            f"quantization {spec.quant_algo!r} is not a convert_checkpoint.py flag (supported: "
            f"{', '.join(sorted(_CONVERT_QUANT))}); quantise with ModelOpt (examples/quantization/quantize.py), "
            "then point engine.checkpoint at the result, or build the engine yourself and set engine.dir"
        )
    if spec.kv_cache_quant_algo and spec.kv_cache_quant_algo not in _CONVERT_KV:
        raise EngineError(f"kv_cache_quantization {spec.kv_cache_quant_algo!r}: supported {', '.join(_CONVERT_KV)}")


def expand(templates: Sequence[ArgvTemplate], values: Mapping[str, Any]) -> BuildPlan:
    """Fill the templates; an unknown placeholder is an error naming it and the known ones."""
    commands = []
    for template in templates:
        argv: list[str] = []
        for element in template:
            if element.startswith("{*") and element.endswith("}"):
                name = element[2:-1]
                value = _lookup(values, name, template)
                if not isinstance(value, (list, tuple)):
                    raise EngineError(f"build template element {element} needs a list value, got {value!r}")
                argv += [str(v) for v in value]
                continue
            try:
                argv.append(element.format_map(_Strict(values, template)))
            except (ValueError, IndexError) as exc:
                raise EngineError(f"build template element {element!r}: {exc}") from None
        commands.append(tuple(argv))
    return BuildPlan(tuple(commands))


def run_plan(plan: BuildPlan, log_path: Path, cwd: Path, timeout_s: float, env: Mapping[str, str] | None = None) -> None:
    """Run each command with output appended to `log_path`; EngineError with the log tail on failure."""
    full_env = {**os.environ, **(env or {})}
    for argv in plan.commands:
        with log_path.open("ab") as log:
            log.write(("$ " + " ".join(argv) + "\n").encode())
            log.flush()
            try:
                code = subprocess.run(list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=full_env,
                                      timeout=timeout_s, stdin=subprocess.DEVNULL).returncode
            except FileNotFoundError:
                raise EngineError(f"build command not found: {argv[0]!r} (is TensorRT-LLM installed and on PATH?)") from None
            except subprocess.TimeoutExpired:
                raise EngineError(f"build command ran past {timeout_s:.0f} s (engine.build_timeout_s): {' '.join(argv)}") from None
        if code != 0:
            tail = "\n".join(f"  | {line}" for line in read_tail(log_path, 30).splitlines())
            raise EngineError(f"build command failed with exit status {code}: {' '.join(argv)}\nlog {log_path}:\n{tail}")


def _plugin_arg(value: Any) -> str:
    if value is True:
        return "enable"
    if value is False or value is None:
        return "disable"
    return str(value)


def _lookup(values: Mapping[str, Any], name: str, template: ArgvTemplate) -> Any:
    if name not in values:
        raise EngineError(f"build template {list(template)} uses {{{name}}}; known: {', '.join(sorted(values))}")
    value = values[name]
    if value is None:
        raise EngineError(f"build template uses {{{name}}} but the engine table does not set it")
    return value


class _Strict(dict):
    """format_map mapping whose misses and unset (None) values are EngineErrors naming the key."""

    def __init__(self, values: Mapping[str, Any], template: ArgvTemplate) -> None:
        super().__init__()
        self._values, self._template = values, template  # (`values` would hide dict.values)

    def __getitem__(self, key: str) -> Any:
        return _lookup(self._values, key, self._template)
