"""The per-session state the hooks delegate to: config, selected targets, servers, baselines, results."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from .settings import pytest_options as options
from .store.baselines import BaselineStore
from .settings.config import ConfigError, LlmserveConfig, Target, find_config_file, load_config
from .hardware import HardwareContext, inventory_from_env_or_option
from .servers.lifecycle import ServerPool

SESSION_KEY = pytest.StashKey["LlmserveSession"]()


@dataclass
class ResultEntry:
    """One finished check, kept for the terminal summary and reports."""

    nodeid: str
    target: str
    kind: str  # slo | equivalence | accuracy | graphs
    passed: bool
    table: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class LlmserveSession:
    """Built once in pytest_configure; every hook and fixture goes through it."""

    config: LlmserveConfig
    selected: list[Target]
    hardware: HardwareContext
    store: BaselineStore
    pool: ServerPool
    requests_override: int | None
    report_json: Path | None
    report_md: Path | None
    _results: list[ResultEntry] = field(default_factory=list, init=False, repr=False)  # through record()
    collected_ids: set[str] = field(default_factory=set)
    leftovers: dict[str, list[int]] = field(default_factory=dict)
    optimisations: dict[str, Any] = field(default_factory=dict)
    ecdf_samples: dict[str, Any] = field(default_factory=dict)  # nodeid → samples for the Markdown's ECDF figure
    repeats_option: int | None = None  # --llmserve-repeats / LLMSERVE_REPEATS / llmserve_repeats
    retries_option: int | None = None  # --llmserve-retries / LLMSERVE_RETRIES / llmserve_retries
    xdist_worker: str | None = None  # "gw0"... on an xdist worker, whose controller merges and reports

    @classmethod
    def from_pytest(cls, pconfig: pytest.Config, progress: Callable[[str], None]) -> LlmserveSession:
        """Read options and config; any problem becomes one UsageError line."""
        rootdir = Path(pconfig.rootpath)
        explicit = options.resolve(pconfig, "llmserve_config")
        try:
            path = Path(explicit) if explicit else find_config_file(rootdir)
            cfg = load_config(path)
            names = options.resolve(pconfig, "llmserve_target") or []
            selected = [cfg.target(n) for n in dict.fromkeys(names)] if names else list(cfg.targets)
        except ConfigError as exc:
            raise pytest.UsageError(f"llmserve config error: {exc}") from None
        try:
            label, origin = options.resolve_with_source(pconfig, "llmserve_hardware")
            hardware = inventory_from_env_or_option(label, config_value=cfg.hardware, option_origin=origin)
        except ValueError as exc:
            raise pytest.UsageError(f"llmserve: {exc}") from None
        base_dir = path.parent if path else rootdir
        baselines = options.resolve(pconfig, "llmserve_baselines_dir") or cfg.baselines_dir or "baselines"
        log_dir = options.resolve(pconfig, "llmserve_log_dir")
        # created on first server start, so runs that start no server leave nothing behind
        # absolute now: a test may change the working directory before a server starts or reports are written
        log_path = Path(log_dir).resolve() if log_dir else Path(tempfile.gettempdir()) / f"llmserve-logs-{os.getpid()}"
        json_path, md_path = (options.resolve(pconfig, k) for k in ("llmserve_report_json", "llmserve_report_md"))
        add_start = bool(options.resolve(pconfig, "llmserve_add_start"))
        return cls(
            config=cfg,
            selected=selected,
            hardware=hardware,
            store=BaselineStore(
                root=(base_dir / baselines).resolve(),
                hardware=hardware.label,
                update=bool(options.resolve(pconfig, "llmserve_update_baselines")) or add_start,
                add_start=add_start,
            ),
            pool=ServerPool(log_dir=log_path, progress=progress),
            requests_override=options.resolve(pconfig, "llmserve_requests"),
            report_json=Path(json_path).resolve() if json_path else None,
            report_md=Path(md_path).resolve() if md_path else None,
            repeats_option=options.resolve(pconfig, "llmserve_repeats"),
            retries_option=options.resolve(pconfig, "llmserve_retries"),
        )

    @property
    def results(self) -> tuple[ResultEntry, ...]:
        """Every finished check so far, in the order recorded (collection order once xdist workers are merged)."""
        return tuple(self._results)

    def record(self, entry: ResultEntry) -> None:
        """The one way a finished check enters the summary and reports."""
        self._results.append(entry)

    def merge_results(self, entries: list[ResultEntry], order: list[str]) -> None:
        """Add checks finished elsewhere (an xdist worker), keeping all of them in collection `order`."""
        self._results.extend(entries)
        rank = {nodeid: i for i, nodeid in enumerate(order)}
        self._results.sort(key=lambda e: rank.get(e.nodeid, len(rank)))

    def note_collected(self, test_ids: Any) -> None:
        """Test ids (as baseline entries spell them) that exist in this run, for unused-entry detection."""
        self.collected_ids.update(test_ids)

    def note_leftovers(self, leftovers: dict[str, list[int]], worker: str | None = None) -> None:
        """Server processes that survived teardown, named by the xdist worker that left them when merged."""
        for name, pids in leftovers.items():
            self.leftovers[name if worker is None else f"{name} on {worker}"] = pids

    def narrow_inventory(self, inventory: Any) -> None:
        """This xdist worker sees only its slice of the GPUs; the label stays the machine's, so baselines do
        not depend on -n."""
        self.hardware = dataclasses.replace(self.hardware, inventory=inventory)

    def keep_ecdf(self, nodeid: str, samples: Any) -> None:
        """Samples of a failing check for the Markdown report's ECDF figure."""
        self.ecdf_samples[nodeid] = samples

    def shutdown(self) -> None:
        """Stop every server (whole process trees) and write the report files asked for."""
        self.note_leftovers(self.pool.stop_all())  # keeps those merged from xdist workers
        if self.xdist_worker is not None:
            return  # the controller writes the merged reports
        from .report.summary import write_reports

        write_reports(self)

    def optimisations_of(self, handle: Any) -> Any:
        """The server's optimisations report, read once per server from its start-up evidence."""
        from .evidence.optimisations import optimisations_for

        key = f"{handle.target.name}@{handle.base_url}"
        if key not in self.optimisations:
            self.optimisations[key] = optimisations_for(handle)
        return self.optimisations[key]

    def target_tolerances(self, target: Target) -> dict:
        """Project-wide tolerances overlaid with the target's own."""
        return {**self.config.tolerance, **target.tolerance}


    def gate_settings(self, target: Target) -> Any:
        """The baseline gate's settings for a target (project-wide, overlaid with the target's table)."""
        return self.config.gate(target)

    def repeats(self, gate: Any) -> int:
        """Rounds to record: option (CLI > env > ini), else the config's baseline_gate.repeats, else 5."""
        from .gates.measure import DEFAULT_REPEATS

        return next(v for v in (self.repeats_option, gate.repeats, DEFAULT_REPEATS) if v is not None)

    def retries(self, gate: Any) -> int:
        """Re-measurements of an invalid round: option, else baseline_gate.retries, else 2."""
        from .gates.measure import DEFAULT_RETRIES

        return next(v for v in (self.retries_option, gate.retries, DEFAULT_RETRIES) if v is not None)


def get_session(pconfig: pytest.Config) -> LlmserveSession:
    return pconfig.stash[SESSION_KEY]
