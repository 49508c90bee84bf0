"""Typed, validated serving-target configuration read from pyproject.toml or llmserve.toml."""

from __future__ import annotations

import functools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlsplit

from .gate import GateSettings

if TYPE_CHECKING:
    from ..servers.base import Backend
    from .suite_tables import SuiteTables

KINDS = ("vllm", "openai", "trtllm-serve", "triton")
SLO_KEYS = (
    "ttft_p50_ms",
    "ttft_p95_ms",
    "ttft_p99_ms",
    "itl_p95_ms",
    "itl_p99_ms",
    "tpot_p95_ms",
    "e2e_p95_ms",
    "e2e_p99_ms",
    "min_output_tok_s",
    "min_requests_s",
    "max_error_rate",
    # what the server did and goodput (checks/server_slo.py)
    "min_prefix_cache_hit_rate",
    "min_spec_acceptance_length",
    "max_spec_acceptance_drop",
    "max_kv_cache_usage",
    "max_preemptions",
    "max_queue_time_ms",
    "min_goodput",
    "goodput_ttft_ms",
    "goodput_tpot_ms",
    "goodput_e2e_ms",
)
TARGET_KEYS = {
    "name": str,
    "kind": str,
    "model": str,
    "served_model_name": str,
    "url": str,
    "launcher": list,
    "args": list,
    "env": dict,
    "startup_timeout_s": (int, float),
    "hardware": str,
    "dtype": str,
    "engine": dict,
    "options": dict,
    "slo": dict,
    "cuda_graphs": dict,
    "concurrency": list,
    "tolerance": dict,
    "client": dict,
    "cpus": str,
    "client_cpus": str,
    "workloads": dict,
    "baseline_gate": dict,
    "capabilities": dict,
    "unsupported_host": str,
}
UNSUPPORTED_HOST = ("fail", "skip")  # a target this host cannot run: its tests fail (default) or skip
WORKLOAD_KEYS = ("profiles", "requests", "concurrency", "warmup", "max_model_len")
CLIENT_KEYS = ("max_send_lag_p99_ms", "max_merged_token_frac", "merged_lag_tolerance_ms", "max_loop_lag_p99_ms", "workers")
TOP_KEYS = {"baselines_dir": str, "hardware": str, "targets": list, "tolerance": dict, "baseline_gate": dict}
DEFAULT_STARTUP_TIMEOUT_S = 600.0
EXTERNAL_STARTUP_TIMEOUT_S = 30.0  # an already-running server that is not up in 30 s is down


_CPU_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")


def parse_cpu_list(text: str) -> set[int]:
    """'0,2-3' -> {0, 2, 3}."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


class ConfigError(Exception):
    """A configuration problem the user can fix; the message names file, key and value."""


@dataclass(frozen=True)
class Tolerance:
    """How far a metric may move from its baseline before it counts as a regression."""

    rel: float = 0.5
    abs: float = 0.0

    def allows(self, measured: float, baseline: float, higher_is_better: bool) -> bool:
        """True when `measured` is no worse than `baseline` beyond rel + abs slack."""
        slack = abs(baseline) * self.rel + self.abs
        return measured >= baseline - slack if higher_is_better else measured <= baseline + slack


@dataclass(frozen=True)
class Target:
    """One serving target: what to start (or where it runs) and what it promises."""

    name: str
    kind: str
    model: str | None = None
    served_model_name: str | None = None
    url: str | None = None
    launcher: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    hardware: str | None = None
    dtype: str | None = None
    engine: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    slo: Mapping[str, float] = field(default_factory=dict)
    cuda_graphs: Mapping[str, Any] = field(default_factory=dict)
    concurrency: tuple[int, ...] = (1, 4, 16)
    tolerance: Mapping[str, Tolerance] = field(default_factory=dict)
    client: Mapping[str, float] = field(default_factory=dict)  # load-client self-check limits, workers
    cpus: str | None = None  # run the server under `taskset -c CPUS`
    client_cpus: str | None = None  # pin the load client (the pytest process) to these CPUs while it runs
    workloads: Mapping[str, Any] = field(default_factory=dict)  # the workload suite: profiles, requests, ...
    capabilities: Mapping[str, Any] = field(default_factory=dict)  # probed API facts overridden (servers/capabilities.py)
    unsupported_host: str = "fail"  # a host that cannot run this target (servers say why): fail or skip its tests
    source: str = "<memory>"
    baseline_gate: Mapping[str, Any] = field(default_factory=dict)  # validated; overlays the project's

    @property
    def model_name(self) -> str:
        """The name clients send in the `model` field."""
        if self.served_model_name:
            return self.served_model_name
        return self.model if not self.is_managed and self.model else self.name

    @functools.cached_property
    def suites(self) -> SuiteTables:
        """The suites' keys of `options`, typed (suite_tables.py; ValueError naming key and value when bad)."""
        from .suite_tables import suite_tables

        return suite_tables(self.options)

    @property
    def is_managed(self) -> bool:
        """Whether the plugin starts this server itself (everything but `openai`: its backend says)."""
        from ..servers.registry import backend_for

        return backend_for(self.kind).managed


@dataclass(frozen=True)
class LlmserveConfig:
    """Everything read from [tool.llmserve]: targets and project-wide defaults."""

    targets: tuple[Target, ...] = ()
    baselines_dir: str | None = None
    hardware: str | None = None
    tolerance: Mapping[str, Tolerance] = field(default_factory=dict)
    source: str | None = None
    baseline_gate: GateSettings = field(default_factory=GateSettings)

    def gate(self, target: Target) -> GateSettings:
        """The baseline-gate settings of one target: project-wide, overlaid with the target's table."""
        return self.baseline_gate.merged(target.baseline_gate, "baseline_gate", _Errors(target.source).fail)

    def target(self, name: str) -> Target:
        """The target called `name`, or a ConfigError listing the known names."""
        for target in self.targets:
            if target.name == name:
                return target
        known = ", ".join(t.name for t in self.targets) or "none configured"
        where = self.source or "no llmserve config file found"
        raise ConfigError(f"unknown target {name!r} (known: {known}; config: {where})")


def find_config_file(rootdir: Path) -> Path | None:
    """llmserve.toml wins over pyproject.toml's [tool.llmserve] in the same directory."""
    dedicated = rootdir / "llmserve.toml"
    if dedicated.is_file():
        return dedicated
    pyproject = rootdir / "pyproject.toml"
    if pyproject.is_file():
        with pyproject.open("rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{pyproject}: not valid TOML: {exc}") from None
        if "llmserve" in data.get("tool", {}):
            return pyproject
    return None


def load_config(path: Path | None) -> LlmserveConfig:
    """Read and validate the config at `path` (None: an empty config)."""
    if path is None:
        return LlmserveConfig()
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if path.name == "pyproject.toml":
        section, prefix = data.get("tool", {}).get("llmserve", {}), "tool.llmserve"
    else:
        if isinstance(data.get("tool"), Mapping) and "llmserve" in data["tool"]:
            raise ConfigError(f"{path}: [tool.llmserve] table: in llmserve.toml write the keys at top level "
                              "([[targets]], baselines_dir, ...); the [tool.llmserve] table is for pyproject.toml")
        section, prefix = data, ""
    return parse_config(section, source=str(path), prefix=prefix)


def parse_config(section: Mapping[str, Any], *, source: str, prefix: str = "") -> LlmserveConfig:
    """Validate a [tool.llmserve] mapping into an LlmserveConfig."""
    err = _Errors(source)
    _check_keys(err, section, TOP_KEYS, prefix)
    base_dir = Path(source).parent if source and not source.startswith("<") else Path.cwd()
    tolerance = _parse_tolerances(err, section.get("tolerance", {}), _join(prefix, "tolerance"))
    gate = GateSettings().merged(section.get("baseline_gate", {}), _join(prefix, "baseline_gate"), err.fail)
    targets: list[Target] = []
    seen: set[str] = set()
    for i, raw in enumerate(section.get("targets", [])):
        where = _join(prefix, f"targets[{i}]")
        if not isinstance(raw, Mapping):
            err.fail(where, raw, "must be a table")
        target = _parse_target(err, raw, where, base_dir, source)
        if target.name in seen:
            err.fail(f"{where}.name", target.name, "duplicates an earlier target name")
        seen.add(target.name)
        targets.append(target)
    return LlmserveConfig(
        targets=tuple(targets),
        baselines_dir=section.get("baselines_dir"),
        hardware=section.get("hardware"),
        tolerance=tolerance,
        source=source,
        baseline_gate=gate,
    )


def _parse_target(err: _Errors, raw: Mapping[str, Any], where: str, base_dir: Path, source: str) -> Target:
    _check_keys(err, raw, TARGET_KEYS, where)
    for required in ("name", "kind"):
        if required not in raw:
            err.fail(f"{where}.{required}", None, "is required")
    name, kind = raw["name"], raw["kind"]
    if not name or any(c in "/\\[]" or c.isspace() for c in name):
        err.fail(f"{where}.name", name, "must be non-empty without '/', '\\', '[', ']' or whitespace")
    if kind not in KINDS:
        err.fail(f"{where}.kind", kind, f"must be one of {', '.join(KINDS)}")
    model = raw.get("model")
    from ..servers.registry import backend_for

    backend = backend_for(kind)
    managed = backend.managed
    if not managed:
        if not raw.get("url"):
            err.fail(f"{where}.url", raw.get("url"), f"is required for kind {kind!r} (the running server's base URL)")
        if not _is_http_url(raw["url"]):
            err.fail(f"{where}.url", raw["url"], "must be an http(s):// URL with a host, e.g. http://127.0.0.1:8000")
    elif model is None:
        err.fail(f"{where}.model", None, f"is required for kind {kind!r}")
    else:
        model = _resolve_model(err, model, base_dir, f"{where}.model")
    for key in ("args", "launcher"):
        if not all(isinstance(a, str) for a in raw.get(key, [])):
            err.fail(f"{where}.{key}", raw.get(key), "must be a list of strings")
    env = raw.get("env", {})
    if not all(isinstance(v, str) for v in env.values()):
        err.fail(f"{where}.env", env, "values must be strings")
    timeout = raw.get("startup_timeout_s", DEFAULT_STARTUP_TIMEOUT_S if managed else EXTERNAL_STARTUP_TIMEOUT_S)
    if not math.isfinite(timeout) or timeout <= 0:  # nan would wait forever: the deadline never passes
        err.fail(f"{where}.startup_timeout_s", timeout, "must be a finite number of seconds > 0")
    slo = dict(raw.get("slo", {}))
    for key, value in slo.items():
        if key not in SLO_KEYS:
            err.fail(f"{where}.slo.{key}", value, f"unknown SLO key; known: {', '.join(SLO_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            err.fail(f"{where}.slo.{key}", value, "must be a finite non-negative number (leave the key out for no limit)")
        from ..checks.server_slo import check_value

        limit_problem = check_value(key, float(value))
        if limit_problem:
            err.fail(f"{where}.slo.{key}", value, limit_problem)
    if "cuda_graphs" in raw:
        from ..checks.graph_requirement import CudaGraphRequirement

        try:
            CudaGraphRequirement.from_config(raw["cuda_graphs"], where=f"{where}.cuda_graphs")
        except ValueError as exc:
            err.fail(f"{where}.cuda_graphs", raw["cuda_graphs"], str(exc))
    client = dict(raw.get("client", {}))
    for key, value in client.items():
        if key not in CLIENT_KEYS:
            err.fail(f"{where}.client.{key}", value, f"unknown key; known: {', '.join(CLIENT_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            err.fail(f"{where}.client.{key}", value, "must be a finite non-negative number")
        if key == "workers" and (not isinstance(value, int) or value < 1):
            err.fail(f"{where}.client.{key}", value, "must be an integer >= 1")
    for key in ("cpus", "client_cpus"):
        if key in raw and not _CPU_LIST.fullmatch(raw[key]):
            err.fail(f"{where}.{key}", raw[key], "must be a CPU list like '0', '0-3' or '0,2-3'")
    workloads = _parse_workloads(err, raw.get("workloads", {}), f"{where}.workloads")
    _check_options(err, backend, raw.get("options", {}), f"{where}.options")
    if "capabilities" in raw:
        from ..servers.capabilities import validate_overrides

        problem = validate_overrides(raw["capabilities"])
        if problem:
            cap_key, value, what = problem
            err.fail(f"{where}.capabilities" + (f".{cap_key}" if cap_key else ""), value, what)
    if raw.get("unsupported_host", "fail") not in UNSUPPORTED_HOST:
        err.fail(f"{where}.unsupported_host", raw["unsupported_host"], f"must be one of {', '.join(UNSUPPORTED_HOST)}")
    concurrency = raw.get("concurrency", [1, 4, 16])
    if not concurrency or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in concurrency):
        err.fail(f"{where}.concurrency", concurrency, "must be a non-empty list of integers >= 1")
    return Target(
        name=name,
        kind=kind,
        model=model,
        served_model_name=raw.get("served_model_name"),
        url=raw.get("url", "").rstrip("/") or None,
        launcher=tuple(raw.get("launcher", ())),
        args=tuple(raw.get("args", ())),
        env=dict(env),
        startup_timeout_s=float(timeout),
        hardware=raw.get("hardware"),
        dtype=raw.get("dtype"),
        engine=dict(raw.get("engine", {})),
        options=dict(raw.get("options", {})),
        slo={k: float(v) for k, v in slo.items()},
        cuda_graphs=dict(raw.get("cuda_graphs", {})),
        concurrency=tuple(concurrency),
        tolerance=_parse_tolerances(err, raw.get("tolerance", {}), f"{where}.tolerance"),
        client=client,
        cpus=raw.get("cpus"),
        client_cpus=raw.get("client_cpus"),
        workloads=workloads,
        capabilities=dict(raw.get("capabilities", {})),
        unsupported_host=raw.get("unsupported_host", "fail"),
        source=source,
        baseline_gate=_checked_gate(err, raw.get("baseline_gate", {}), f"{where}.baseline_gate"),
    )


def _check_options(err: _Errors, backend: Backend, options: Any, where: str) -> None:
    """The suites' tables in `options` typed, and the rest accepted by the backend (file/key/value errors)."""
    from .option_tables import SUITE_OPTION_KEYS
    from .suite_tables import OptionError, suite_tables

    if not isinstance(options, Mapping):
        err.fail(where, options, "must be a table")
    try:
        suite_tables(options)
    except OptionError as exc:
        err.fail(f"{where}.{exc.key}", exc.value, exc.problem)
    problem = backend.option_problem({k: v for k, v in options.items() if k not in SUITE_OPTION_KEYS})
    if problem:
        key, value, what = problem
        err.fail(f"{where}.{key}", value, what)


def _parse_workloads(err: _Errors, raw: Mapping[str, Any], where: str, shape_only: bool = False) -> dict[str, Any]:
    """The `workloads` table: which profiles the workload suite runs, and their shape."""
    from ..load.workloads import PROFILES

    for key, value in raw.items():
        if key in PROFILES:  # one profile's own shape: { requests = N, concurrency = N, warmup = N }
            if not isinstance(value, Mapping):
                err.fail(f"{where}.{key}", value, "must be a table like { requests = 16, concurrency = 4 }")
            _parse_workloads(err, {k: v for k, v in value.items()}, f"{where}.{key}", shape_only=True)
            continue
        if key not in WORKLOAD_KEYS or (shape_only and key in ("profiles", "max_model_len")):
            known = [k for k in WORKLOAD_KEYS if not shape_only or k not in ("profiles", "max_model_len")]
            err.fail(f"{where}.{key}", value, f"unknown key; known: {', '.join(known + ([] if shape_only else list(PROFILES)))}")
        if key == "profiles":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                err.fail(f"{where}.{key}", value, f"must be a non-empty list of profile names ({', '.join(PROFILES)})")
            for name in value:
                if name not in PROFILES:
                    err.fail(f"{where}.{key}", name, f"unknown profile; known: {', '.join(PROFILES)}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "warmup" else 1):
            err.fail(f"{where}.{key}", value, f"must be an integer >= {0 if key == 'warmup' else 1}")
    return dict(raw)


def _checked_gate(err: _Errors, raw: Any, where: str) -> dict[str, Any]:
    GateSettings().merged(raw, where, err.fail)  # validates; merged over the project's settings later
    return dict(raw)


def _resolve_model(err: _Errors, model: Any, base_dir: Path, where: str) -> str:
    """A model that looks like a path must exist; a hub id (org/name) is passed through."""
    if not isinstance(model, str) or not model:
        err.fail(where, model, "must be a non-empty string")
    looks_like_path = model.startswith((".", "/", "~")) or (base_dir / model).exists() or model.count("/") != 1
    if not looks_like_path:
        return model
    path = Path(model).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.exists():
        err.fail(where, model, f"path does not exist (resolved to {path})")
    return str(path.resolve())


def _parse_tolerances(err: _Errors, raw: Any, where: str) -> dict[str, Tolerance]:
    if not isinstance(raw, Mapping):
        err.fail(where, raw, "must be a table of metric = { rel = ..., abs = ... }")
    out: dict[str, Tolerance] = {}
    for metric, spec in raw.items():
        if not isinstance(spec, Mapping) or set(spec) - {"rel", "abs"}:
            err.fail(f"{where}.{metric}", spec, "must be a table with keys rel and/or abs")
        values = {k: v for k, v in spec.items()}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                err.fail(f"{where}.{metric}.{key}", value, "must be a finite non-negative number")
        out[metric] = Tolerance(**{k: float(v) for k, v in values.items()})
    return out


def _check_keys(err: _Errors, raw: Mapping[str, Any], allowed: Mapping[str, Any], where: str) -> None:
    for key, value in raw.items():
        if key not in allowed:
            err.fail(_join(where, key), value, f"unknown key; allowed: {', '.join(sorted(allowed))}")
        if not isinstance(value, allowed[key]) or isinstance(value, bool):
            expected = allowed[key]
            names = " or ".join(t.__name__ for t in expected) if isinstance(expected, tuple) else expected.__name__
            err.fail(_join(where, key), value, f"must be of type {names}")


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


@dataclass(frozen=True)
class _Errors:
    source: str

    def fail(self, key: str, value: Any, problem: str) -> None:
        shown = "(missing)" if value is None else repr(value)
        raise ConfigError(f"{self.source}: {key} = {shown}: {problem}")
