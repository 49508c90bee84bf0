"""A Triton model repository for a TensorRT-LLM engine: preprocessing -> tensorrt_llm -> postprocessing,
tied together by an ensemble, generated from tensorrtllm_backend's `all_models/inflight_batcher_llm`.

The templates are the user's checkout of that directory (tensorrtllm_backend, or TensorRT-LLM's
`triton_backend/`) at the tag matching their container; they are copied, then every config.pbtxt
is filled exactly as `tools/fill_template.py` does (string.Template.safe_substitute; `${name}` kept
when not given; defaults max_queue_size=0 and max_queue_delay_microseconds=0). Placeholders left
inside a `parameters { string_value: "${x}" }` mean "unset" to the backends; any other leftover
makes tritonserver fail to parse the file, so it is reported here instead. The equivalent
`fill_template.py` command lines are returned so a run can be reproduced by hand.

The small protobuf-text reader (`parse_pbtxt`) reads config.pbtxt files (messages, repeated
fields, strings, numbers, identifiers, `#` comments) into dicts/lists for checks and tests.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, Mapping

from ..engines.config import EngineConfig

MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble")
TEMPLATES_ENV = "LLMSERVE_TRITON_TEMPLATES"
FILL_DEFAULTS = {"max_queue_size": "0", "max_queue_delay_microseconds": "0"}  # as tools/fill_template.py
_PARAM_VALUE = re.compile(r'string_value:\s*"\$\{(\w+)\}"')


class TritonRepoError(Exception):
    """The model repository cannot be generated; the message says what to change."""


@dataclass(frozen=True)
class TritonRepo:
    """A generated repository and what went into it."""

    path: Path
    ensemble_name: str
    decoupled: bool
    substitutions: Mapping[str, str]
    unset_parameters: Mapping[str, tuple[str, ...]]  # model -> placeholders left as "unset" parameters
    ensemble_inputs: tuple[str, ...]
    fill_commands: tuple[str, ...] = field(default=())

    def config_path(self, model: str) -> Path:
        name = self.ensemble_name if model == "ensemble" else model
        return self.path / name / "config.pbtxt"


def default_substitutions(engine_dir: Path, tokenizer_dir: Path, engine: EngineConfig, decoupled: bool) -> dict[str, str]:
    """The values the TensorRT-LLM docs fill for an inflight-batching deployment of this engine."""
    if engine.max_batch_size is None:
        raise TritonRepoError(f"{engine_dir}/config.json records no max_batch_size; cannot size the Triton models")
    return {
        "triton_backend": "tensorrtllm",
        "triton_max_batch_size": str(engine.max_batch_size),
        "decoupled_mode": "true" if decoupled else "false",
        "engine_dir": str(engine_dir),
        "tokenizer_dir": str(tokenizer_dir),
        "max_beam_width": str(engine.max_beam_width or 1),
        "batching_strategy": "inflight_fused_batching",
        "exclude_input_in_output": "true",
        "preprocessing_instance_count": "1",
        "postprocessing_instance_count": "1",
        "logits_datatype": "TYPE_FP32",
        "encoder_input_features_data_type": "TYPE_FP16",
        "prompt_embedding_table_data_type": "TYPE_FP16",
        **FILL_DEFAULTS,
    }


def generate_repository(
    templates: Path,
    dest: Path,
    *,
    engine_dir: Path,
    tokenizer_dir: Path,
    engine: EngineConfig,
    ensemble_name: str = "ensemble",
    decoupled: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> TritonRepo:
    """Copy the four models from `templates` into `dest` and fill their config.pbtxt files."""
    templates = Path(templates)
    missing = [m for m in MODELS if not (templates / m / "config.pbtxt").is_file()]
    if missing:
        raise TritonRepoError(
            f"{templates} is not tensorrtllm_backend's all_models/inflight_batcher_llm (missing "
            f"{', '.join(m + '/config.pbtxt' for m in missing)}); point options.templates or ${TEMPLATES_ENV} at it"
        )
    if not any((Path(tokenizer_dir) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise TritonRepoError(f"{tokenizer_dir} has no tokenizer files (tokenizer.json / tokenizer_config.json); "
                              "the preprocessing and postprocessing models load the tokenizer from it")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", ensemble_name):
        raise TritonRepoError(f"ensemble name {ensemble_name!r}: use letters, digits, '_', '.', '-'")
    subs = default_substitutions(Path(engine_dir), Path(tokenizer_dir), engine, decoupled)
    subs.update({str(k): _text(v) for k, v in (overrides or {}).items()})
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    unset: dict[str, tuple[str, ...]] = {}
    commands: list[str] = []
    ensemble_inputs: tuple[str, ...] = ()
    for model in MODELS:
        name = ensemble_name if model == "ensemble" else model
        target_dir = dest / name
        shutil.copytree(templates / model, target_dir)
        (target_dir / "1").mkdir(exist_ok=True)  # git drops empty version dirs; Triton needs one
        cfg = target_dir / "config.pbtxt"
        text = cfg.read_text(encoding="utf-8")
        present = placeholders(text)
        used = {k: v for k, v in subs.items() if k in present}
        filled = fill_template(text, used)
        if model == "ensemble" and name != "ensemble":
            filled, n = re.subn(r'^(\s*name:\s*)"ensemble"', rf'\g<1>"{name}"', filled, count=1, flags=re.M)
            if n != 1:
                raise TritonRepoError(f"{templates}/ensemble/config.pbtxt has no name: \"ensemble\" line to rename")
        left = placeholders(filled)
        outside = sorted(left - set(_PARAM_VALUE.findall(filled)))
        if outside:
            raise TritonRepoError(
                f"{name}/config.pbtxt: {', '.join('${' + p + '}' for p in outside)} not filled and not inside a "
                "parameters string_value, so tritonserver could not parse the file; give values in options.fill"
            )
        cfg.write_text(filled, encoding="utf-8")
        unset[name] = tuple(sorted(left))
        if used:
            commands.append(f"python3 tools/fill_template.py -i {name}/config.pbtxt {format_substitutions(used)}")
        if model == "ensemble":
            ensemble_inputs = input_names(parse_pbtxt(filled))
    return TritonRepo(path=dest, ensemble_name=ensemble_name, decoupled=decoupled, substitutions=subs,
                      unset_parameters=unset, ensemble_inputs=ensemble_inputs, fill_commands=tuple(commands))


def fill_template(text: str, substitutions: Mapping[str, Any]) -> str:
    """tools/fill_template.py: safe_substitute with its two defaults (unknown `${x}` stay as they are)."""
    return Template(text).safe_substitute({**FILL_DEFAULTS, **{k: _text(v) for k, v in substitutions.items()}})


def placeholders(text: str) -> set[str]:
    """Names of the `${name}` / `$name` placeholders string.Template would substitute."""
    names = set()
    for m in Template.pattern.finditer(text):
        name = m.group("named") or m.group("braced")
        if name:
            names.add(name)
    return names


def parse_substitutions(arg: str) -> dict[str, str]:
    """fill_template.py's `k:v,k2:v2` argument, split as it splits it: on unescaped ',', then each
    item on unescaped ':', a backslash escaping the next character at each of the two levels."""
    out: dict[str, str] = {}
    for item in _split(arg, ","):
        parts = _split(item, ":")
        if len(parts) != 2:
            raise ValueError(f"substitution {item!r} must be key:value (escape ':' or ',' in values with '\\')")
        out[parts[0]] = parts[1]
    return out


def format_substitutions(subs: Mapping[str, Any]) -> str:
    """The inverse of parse_substitutions.

    fill_template.py unescapes twice (splitting on ',' then each item on ':'), so ':' and '\\'
    inside keys and values are escaped for the inner split first, then '\\' and ',' for the outer.
    """
    def inner(s: str) -> str:
        return s.replace("\\", "\\\\").replace(":", "\\:")

    def outer(s: str) -> str:
        return s.replace("\\", "\\\\").replace(",", "\\,")

    return ",".join(outer(f"{inner(str(k))}:{inner(_text(v))}") for k, v in subs.items())


def _split(text: str, delimiter: str) -> list[str]:
    result, current, escape = [], [], False
    for ch in text:
        if escape:
            current.append(ch)
            escape = False
        elif ch == delimiter:
            result.append("".join(current))
            current = []
        elif ch == "\\":
            escape = True
        else:
            current.append(ch)
    result.append("".join(current))
    return result


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---- protobuf text format (the subset config.pbtxt files use) ---------------------------------

_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{}\[\]:,;<>]|[^\s{}\[\]:,;<>"\'#]+')


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Fields to values; a field seen twice (or given a [...] list) becomes a list."""
    tokens = [t for t in _TOKEN.findall(text) if t.strip() and not t.startswith("#")]
    pos, msg = _message(tokens, 0, end=None)
    if pos != len(tokens):
        raise ValueError(f"pbtxt: unexpected {tokens[pos]!r}")
    return msg


def _message(tokens: list[str], pos: int, end: str | None) -> tuple[int, dict[str, Any]]:
    out: dict[str, Any] = {}
    while pos < len(tokens) and tokens[pos] != end:
        name = tokens[pos]
        pos += 1
        if pos < len(tokens) and tokens[pos] == ":":
            pos += 1
        pos, value = _value(tokens, pos)
        if name in out:
            prev = out[name]
            out[name] = (prev if isinstance(prev, list) else [prev]) + (value if isinstance(value, list) else [value])
        else:
            out[name] = value
        if pos < len(tokens) and tokens[pos] in (",", ";"):
            pos += 1
    if end is not None:
        if pos >= len(tokens):
            raise ValueError(f"pbtxt: missing {end!r}")
        pos += 1
    return pos, out


def _value(tokens: list[str], pos: int) -> tuple[int, Any]:
    if pos >= len(tokens):
        raise ValueError("pbtxt: value expected at end of input")
    tok = tokens[pos]
    if tok in ("{", "<"):
        return _message(tokens, pos + 1, "}" if tok == "{" else ">")
    if tok == "[":
        items, pos = [], pos + 1
        while tokens[pos] != "]":
            pos, item = _value(tokens, pos)
            items.append(item)
            if tokens[pos] == ",":
                pos += 1
        return pos + 1, items
    return pos + 1, _atom(tok)


def _atom(tok: str) -> Any:
    if tok[0] in "\"'":
        return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
    low = tok.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(tok)
        except ValueError:
            pass
    return tok  # enum identifier such as TYPE_INT32 or KIND_CPU


def input_names(config: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of a parsed model config's `input` entries."""
    inputs = config.get("input", [])
    inputs = inputs if isinstance(inputs, list) else [inputs]
    return tuple(name for i in inputs if isinstance(i, Mapping) and (name := i.get("name")))
