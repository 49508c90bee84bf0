"""pytest-benchmark bridge: every `llm_load` run also becomes an entry of pytest-benchmark's output.

Dashboards that read ``--benchmark-json`` (or ``--benchmark-save`` / ``--benchmark-autosave``
files) keep working: when any of those, or ``--benchmark-compare``, is given, each load run is
added to pytest-benchmark's session as a ``pytest_benchmark.stats.Metadata`` built from the run,
so it is written, tabled, saved and compared exactly like a native benchmark. The test does not
request the ``benchmark`` fixture: that fixture times a callable itself, while a load run's
timings come from the load client, one per request.

Mapping of one load run (the k-th `llm_load(...)` call of a test, k from 1):

* ``name`` ``<test name>::llm_load#<k>``; ``fullname`` ``<baseline id>::llm_load#<k>`` (the node id,
  but ``suites/<file>::...`` for the ready-made suites however collected: baseline_ids.py; unique, and
  stable across sessions and install paths, so ``--benchmark-compare`` pairs runs; never the test's
  own nodeid, which a ``benchmark`` fixture in the same test uses).
* ``group`` ``llmserve <target>``: load runs get their own table, apart from micro-benchmarks.
* ``param`` / ``params``: the test's callspec id and params (values that are not JSON scalars
  are given by their ``name`` attribute, e.g. a Target, else ``repr``).
* ``stats``: pytest-benchmark's own ``Stats`` over per-request end-to-end latency in seconds
  (send to last token) of the successful measured requests: one request is one round
  (``rounds`` = requests, ``iterations`` 1, ``ops`` = 1/mean). ``data`` holds the seconds.
* ``extra_info``: ``RunResult.to_dict()`` (``metrics`` with TTFT/ITL/TPOT/E2E percentiles,
  throughput and error rate; spec, validity, client self-check, definitions) plus ``target``,
  ``hardware`` (the baseline label) and ``stats_of``.
* ``options``: ``timer`` names the load client's clock; ``warmup`` the warm-up requests.

Invalid runs are entries too (``extra_info["valid"]`` is False, ``invalid_reasons`` says why); a
run with no successful request has no sample and adds no entry (its test fails on its own).
``pytest_benchmark_update_machine_info`` adds ``llmserve_hardware`` (label and GPU inventory) to
``machine_info``, which pytest-benchmark's machine id leaves out. Under xdist pytest-benchmark
disables itself in every process; workers send their entries to the controller
(`xdist_support`), which adds them before pytest-benchmark writes its files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from ..store.baseline_ids import baseline_id
from ..hardware import HardwareContext
from ..load import RunResult

STATS_OF = "e2e_s: per-request seconds from send to the last token, successful measured requests"
TIMER = "llmserve load client (CLOCK_REALTIME; kernel receive timestamps)"
OUTPUT_OPTIONS = ("benchmark_json", "benchmark_save", "benchmark_autosave", "benchmark_compare")
_RECORDED = pytest.StashKey[list["LoadBenchmark"]]()
_COUNTS = pytest.StashKey[dict[str, int]]()


@dataclass(frozen=True)
class LoadBenchmark:
    """One load run in pytest-benchmark's terms; plain data so xdist workers can send it."""

    name: str
    fullname: str
    group: str
    param: str | None
    params: dict[str, Any] | None
    data: tuple[float, ...]  # seconds, one per successful measured request
    extra_info: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fullname": self.fullname, "group": self.group, "param": self.param,
                "params": self.params, "data": list(self.data), "extra_info": self.extra_info,
                "options": self.options}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadBenchmark:
        return cls(**{**d, "data": tuple(d["data"])})

    def to_metadata(self) -> Any:
        """pytest-benchmark's Metadata, its Stats filled with our samples."""
        from pytest_benchmark.stats import Metadata

        meta = Metadata(_AsFixture(self), iterations=1, options=dict(self.options))
        for seconds in self.data:
            meta.update(seconds)
        return meta


@dataclass(frozen=True)
class _AsFixture:
    """The attributes Metadata copies from a BenchmarkFixture."""

    entry: LoadBenchmark
    cprofile_stats: None = None
    has_error: bool = False

    def __getattr__(self, name: str) -> Any:  # name, fullname, group, param, params, extra_info
        return getattr(self.entry, name)


def wanted(pconfig: pytest.Config) -> bool:
    """Whether pytest-benchmark is loaded and asked to write, save or compare (and not disabled or skipped)."""
    if not pconfig.pluginmanager.hasplugin("benchmark"):
        return False
    if pconfig.getoption("benchmark_skip", False):
        return False
    if pconfig.getoption("benchmark_disable", False) and not pconfig.getoption("benchmark_enable", False):
        return False
    return any(pconfig.getoption(opt, None) for opt in OUTPUT_OPTIONS)


def entry_for_run(item: pytest.Item, index: int, target: str, hardware: str, result: RunResult) -> LoadBenchmark:
    """The pytest-benchmark view of one load run (see the module docstring for the mapping)."""
    callspec = getattr(item, "callspec", None)
    data = tuple(r.e2e_ms / 1000.0 for r in result.records if not r.warmup and r.ok and r.e2e_ms is not None)
    suffix = f"::llm_load#{index}"
    return LoadBenchmark(
        name=item.name + suffix,
        fullname=baseline_id(item) + suffix,
        group=f"llmserve {target}",
        param=callspec.id if callspec else None,
        params={k: _jsonable(v) for k, v in callspec.params.items()} if callspec else None,
        data=data,
        extra_info={**result.to_dict(), "target": target, "hardware": hardware, "stats_of": STATS_OF},
        options={"timer": TIMER, "warmup": result.spec.warmup},
    )


def record_load(pconfig: pytest.Config, item: pytest.Item, target: str, result: RunResult) -> LoadBenchmark | None:
    """Called by `llm_load` after each run: keep the entry and, outside xdist workers, publish it now."""
    if not wanted(pconfig):
        return None
    from ..session import get_session

    counts = pconfig.stash.setdefault(_COUNTS, {})
    counts[item.nodeid] = counts.get(item.nodeid, 0) + 1
    entry = entry_for_run(item, counts[item.nodeid], target, get_session(pconfig).hardware.label, result)
    pconfig.stash.setdefault(_RECORDED, []).append(entry)
    if not hasattr(pconfig, "workerinput"):  # a worker's entries are published by the controller
        publish(pconfig, [entry])
    return entry


def recorded(pconfig: pytest.Config) -> list[LoadBenchmark]:
    """Entries recorded in this process (what an xdist worker sends to the controller)."""
    entries = pconfig.stash.get(_RECORDED, [])
    return list(entries)


def publish(pconfig: pytest.Config, entries: list[LoadBenchmark]) -> int:
    """Append entries with samples to pytest-benchmark's session; returns how many were added."""
    session = getattr(pconfig, "_benchmarksession", None)
    if session is None or not entries or not wanted(pconfig):
        return 0
    added = [entry.to_metadata() for entry in entries if entry.data]
    session.benchmarks.extend(added)
    return len(added)


class BenchmarkHooks:
    """pytest-benchmark hook implementations; registered only when pytest-benchmark is loaded."""

    def __init__(self, hardware: HardwareContext) -> None:
        self.info = {"label": hardware.label, "inventory": hardware.inventory.summary()}

    def pytest_benchmark_update_machine_info(self, config: pytest.Config, machine_info: dict[str, Any]) -> None:
        machine_info["llmserve_hardware"] = dict(self.info)


def configure(pconfig: pytest.Config, hardware: HardwareContext) -> None:
    """Register BenchmarkHooks when pytest-benchmark is present (its hookspecs exist only then)."""
    if pconfig.pluginmanager.hasplugin("benchmark"):
        pconfig.pluginmanager.register(BenchmarkHooks(hardware), "llmserve-benchmark")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else repr(value)
