"""Command-line options, their ini keys and LLMSERVE_* variables, resolved CLI > env > ini > default."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

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

    @property
    def ini(self) -> str:
        return self.dest

    @property
    def env(self) -> str:
        return self.env_var or self.dest.upper()


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("--llmserve-target", "llmserve_target", "select a configured target by name (repeatable; default: all)", kind="list"),
    OptionSpec("--llmserve-config", "llmserve_config", "path to llmserve.toml or a pyproject.toml with [tool.llmserve]"),
    OptionSpec("--llmserve-baselines-dir", "llmserve_baselines_dir", "directory holding baseline JSON files (default: baselines)"),
    OptionSpec("--llmserve-hardware", "llmserve_hardware", "hardware label for baselines, or fake:<spec> for a fake inventory"),
    OptionSpec("--llmserve-log-dir", "llmserve_log_dir", "directory for server log files (default: a session temp dir)"),
    OptionSpec("--llmserve-requests", "llmserve_requests", "override the number of measured requests of every load run", kind="int"),
    OptionSpec("--llmserve-report-json", "llmserve_report_json", "write all results of the session to this JSON file"),
    OptionSpec("--llmserve-report-md", "llmserve_report_md", "write a Markdown report (pull-request comment) to this file"),
    OptionSpec("--llmserve-repeats", "llmserve_repeats", "rounds recorded per test by --update-baselines (default 5; run-to-run spread needs >= 2)", kind="int"),
    OptionSpec("--llmserve-retries", "llmserve_retries", "re-measure a round the client marks invalid (or with connection errors) up to N times (default 2)", kind="int"),
    OptionSpec("--update-baselines", "llmserve_update_baselines", "record measured values as the new baselines (tests pass)", kind="bool", env_var="LLMSERVE_UPDATE_BASELINES"),
)

_CONVERT: dict[str, Callable[[str], Any]] = {
    "string": str,
    "int": int,
    "float": float,
    "bool": lambda s: s.strip().lower() in ("1", "true", "yes", "on"),
    "list": lambda s: [part.strip() for part in s.replace("\n", ",").split(",") if part.strip()],
}


def add_options(parser: pytest.Parser) -> None:
    """Register every option with its flag, ini key and help naming its env variable."""
    group = parser.getgroup("llmserve", "LLM serving gates (pytest-llmserve)")
    for spec in OPTIONS:
        help_text = f"{spec.help} [env {spec.env}, ini {spec.ini}]"
        if spec.kind == "bool":
            group.addoption(spec.flag, action="store_true", dest=spec.dest, default=None, help=help_text)
        elif spec.kind == "list":
            group.addoption(spec.flag, action="append", dest=spec.dest, default=None, help=help_text)
        else:
            group.addoption(spec.flag, action="store", dest=spec.dest, default=None, help=help_text)
        parser.addini(spec.ini, help=help_text, type="linelist" if spec.kind == "list" else "string", default=None)


def resolve(config: pytest.Config, dest: str) -> Any:
    """The effective value of one option: CLI, then LLMSERVE_* env, then ini, then default."""
    spec = next(s for s in OPTIONS if s.dest == dest)
    cli = config.getoption(dest, default=None)
    if cli not in (None, [], False):
        return cli
    env = os.environ.get(spec.env)
    if env:
        try:
            return _CONVERT[spec.kind](env)
        except ValueError:
            raise pytest.UsageError(f"{spec.env}={env!r}: not a valid {spec.kind}") from None
    ini = config.getini(spec.ini)
    if ini not in (None, "", []):
        if spec.kind == "list":
            return [x for item in ini for x in _CONVERT["list"](item)]
        try:
            return _CONVERT[spec.kind](ini)
        except ValueError:
            raise pytest.UsageError(f"ini {spec.ini} = {ini!r}: not a valid {spec.kind}") from None
    return spec.default
