"""Command-line options, their ini keys and LLMSERVE_* variables, resolved CLI > env > ini > default.

Every route yields the same typed value: an `int` option is an int whether it came from
`--llmserve-requests 8`, `LLMSERVE_REQUESTS=8` or `llmserve_requests = 8`, and a bad value on any
route stops the session with one line naming that route, the value and what to write instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Literal

import pytest


@dataclass(frozen=True)
class OptionSpec:
    """One user-facing setting, reachable three ways."""

    flag: str
    dest: str
    help: str
    default: Any = None
    kind: str = "string"  # string | bool | int | float | list
    env_var: str | None = None
    minimum: float | None = None  # int and float options: the smallest value accepted

    @property
    def ini(self) -> str:
        return self.dest

    @property
    def env(self) -> str:
        return self.env_var or self.dest.upper()


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("--llmserve-target", "llmserve_target", "select a configured target by name (repeatable or comma-separated; default: all)", kind="list"),
    OptionSpec("--llmserve-config", "llmserve_config", "path to llmserve.toml or a pyproject.toml with [tool.llmserve]"),
    OptionSpec("--llmserve-baselines-dir", "llmserve_baselines_dir", "directory holding baseline JSON files (default: baselines)"),
    OptionSpec("--llmserve-hardware", "llmserve_hardware", "hardware label for baselines, or fake:<spec> for a fake inventory"),
    OptionSpec("--llmserve-log-dir", "llmserve_log_dir", "directory for server log files (default: a session temp dir)"),
    OptionSpec("--llmserve-requests", "llmserve_requests", "override the number of measured requests of every load run", kind="int", minimum=1),
    OptionSpec("--llmserve-report-json", "llmserve_report_json", "write all results of the session to this JSON file"),
    OptionSpec("--llmserve-report-md", "llmserve_report_md", "write a Markdown report (pull-request comment) to this file"),
    OptionSpec("--llmserve-repeats", "llmserve_repeats", "rounds recorded per test by --update-baselines (default 5; run-to-run spread needs >= 2)", kind="int", minimum=1),
    OptionSpec("--llmserve-retries", "llmserve_retries", "re-measure a round the client marks invalid (or with connection errors) up to N times (default 2)", kind="int", minimum=0),
    OptionSpec("--update-baselines", "llmserve_update_baselines", "record measured values as the new baselines (tests pass)", kind="bool", env_var="LLMSERVE_UPDATE_BASELINES"),
    OptionSpec("--llmserve-add-start", "llmserve_add_start", "record this run as one more server start of the stored baselines: its rounds join the stored ones (same request shape), so the gate's noise model includes start-to-start spread (implies --update-baselines)", kind="bool"),
)

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_EXAMPLE = {"int": "8", "float": "0.5", "string": "text", "list": "a,b", "bool": "1"}


def _to_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(word)


def _to_list(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


_CONVERT: dict[str, Callable[[str], Any]] = {
    "string": str,
    "int": lambda s: int(s.strip()),
    "float": lambda s: float(s.strip()),
    "bool": _to_bool,
    "list": _to_list,
}


def convert(spec: OptionSpec, raw: Any) -> Any:
    """`raw` (text from any route, or an already typed value) as the option's type; ValueError if it is not one."""
    value = _CONVERT[spec.kind](raw) if isinstance(raw, str) else raw
    if spec.minimum is not None and value < spec.minimum:
        raise ValueError(value)
    return value


def describe(spec: OptionSpec) -> str:
    """What the option takes: 'an integer >= 1', 'a boolean (1/0, ...)'."""
    noun = {"int": "an integer", "float": "a number", "string": "text", "list": "a list",
            "bool": "a boolean (" + ", ".join(f"{t}/{f}" for t, f in zip(_TRUE, _FALSE)) + ")"}[spec.kind]
    return noun + (f" >= {spec.minimum:g}" if spec.minimum is not None else "")


def _problem(spec: OptionSpec, where: str, raw: Any) -> str:
    """One line naming the route, the value, what the option takes and an example."""
    example = "" if spec.kind == "bool" else f" (e.g. {_EXAMPLE[spec.kind]})"
    return f"{where}={raw!r} is not {describe(spec)}{example}; it sets {spec.flag}"


def _cli_type(spec: OptionSpec) -> Callable[[str], Any]:
    """argparse `type=` for the flag, so the CLI route is typed like the other two."""

    def parse(text: str) -> Any:
        try:
            return convert(spec, text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {describe(spec)} (e.g. {spec.flag}="
                                             f"{_EXAMPLE[spec.kind]})") from None

    parse.__name__ = spec.kind
    return parse


def _type_note(spec: OptionSpec) -> str:
    """' (an integer >= 1)' and the like for typed options; nothing for text and lists."""
    if spec.kind in ("string", "list"):
        return ""
    if spec.kind == "bool":
        return f" (a flag; env/ini: {describe(spec)})"
    return f" ({describe(spec)})"


def add_options(parser: pytest.Parser) -> None:
    """Register every option with its flag, ini key and help naming its env variable."""
    group = parser.getgroup("llmserve", "LLM serving gates (pytest-llmserve)")
    for spec in OPTIONS:
        help_text = f"{spec.help}{_type_note(spec)} [env {spec.env}, ini {spec.ini}]"
        if spec.kind == "bool":
            group.addoption(spec.flag, action="store_true", dest=spec.dest, default=None, help=help_text)
        elif spec.kind == "list":
            group.addoption(spec.flag, action="append", dest=spec.dest, default=None, help=help_text)
        elif spec.kind in ("int", "float"):
            group.addoption(spec.flag, action="store", dest=spec.dest, default=None, type=_cli_type(spec), help=help_text)
        else:
            group.addoption(spec.flag, action="store", dest=spec.dest, default=None, help=help_text)
        ini_type: Literal["linelist", "string"] = "linelist" if spec.kind == "list" else "string"
        parser.addini(spec.ini, help=help_text, type=ini_type, default=None)


def spec_for(dest: str) -> OptionSpec:
    return next(s for s in OPTIONS if s.dest == dest)


def resolve_with_source(config: pytest.Config, dest: str) -> tuple[Any, str]:
    """The effective value of one option and where it came from ('--flag', 'env NAME', 'ini key', 'default')."""
    spec = spec_for(dest)
    cli = config.getoption(dest, default=None)
    if cli not in (None, [], False):
        if spec.kind == "list":
            cli = [name for item in cli for name in _to_list(item)]
        return cli, spec.flag
    env = os.environ.get(spec.env)
    if env is not None and env.strip():
        return _checked(spec, f"env {spec.env}", env), f"env {spec.env}"
    ini = config.getini(spec.ini)
    if ini not in (None, "", []):
        raw = ",".join(ini) if spec.kind == "list" else ini
        return _checked(spec, f"ini {spec.ini}", raw), f"ini {spec.ini}"
    return spec.default, "default"


def _checked(spec: OptionSpec, where: str, raw: str) -> Any:
    try:
        return convert(spec, raw)
    except ValueError:
        raise pytest.UsageError(_problem(spec, where, raw)) from None


def resolve(config: pytest.Config, dest: str) -> Any:
    """The effective value of one option: CLI, then LLMSERVE_* env, then ini, then default."""
    return resolve_with_source(config, dest)[0]


def reproduce_flags(config: pytest.Config) -> list[str]:
    """Every llmserve setting in effect, whichever route set it, written as command-line flags."""
    flags: list[str] = []
    for spec in OPTIONS:
        value, source = resolve_with_source(config, spec.dest)
        if source == "default" or value in (None, False, [], ""):
            continue
        if spec.kind == "bool":
            flags.append(spec.flag)
        elif spec.kind == "list":
            flags += [f"{spec.flag}={shlex.quote(str(item))}" for item in value]
        else:
            flags.append(f"{spec.flag}={shlex.quote(str(value))}")
    return flags
