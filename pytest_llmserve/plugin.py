"""pytest hooks: each delegates to the LlmserveSession kept in config.stash."""

from __future__ import annotations

import pytest

from .integrations import benchmark as benchmark_bridge
from . import markers
from .settings import pytest_options as options
from .report import progress
from .report import summary as report
from .integrations import xdist as xdist_support
from .store.baseline_ids import baseline_id
from .checks.slo import validate_limits
from .fixtures import _llm_server_session, llm_load, llm_server, llm_servers, llm_target  # noqa: F401  (fixtures)
from .report.header import header_lines
from .session import SESSION_KEY, LlmserveSession, get_session

MARKERS = (
    "slo(ttft_p95_ms=None, itl_p95_ms=None, tpot_p95_ms=None, e2e_p95_ms=None, min_output_tok_s=None, "
    "max_error_rate=None, ...): service-level limits checked by llm_load(...).assert_slo(); select with -m slo",
    "gpu(sku=None, count=1, min_memory_gb=None, min_compute_capability=None): needs these GPUs "
    "(NVML inventory); skipped with the reason otherwise",
    "equivalence: token-level equivalence with the Hugging Face reference",
    "accuracy: accuracy-delta gates (e.g. FP8 vs FP16)",
    "cuda_graphs: CUDA-graph and optimisation evidence checks",
    "promotion: candidate-vs-incumbent promotion gate (noise-aware A/B comparison)",
    "workload: named workload profiles (chat, rag, long-context, batch, multi-turn) against SLOs and baselines",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    # the terminal reporter registers after this hook: the emitter looks it up at each line
    state = config.stash[SESSION_KEY] = LlmserveSession.from_pytest(config, progress.pytest_emitter(config))
    benchmark_bridge.configure(config, state.hardware)
    xdist_support.configure(config, state)  # a worker's GPU slice is set here, before any server starts


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(SESSION_KEY, None)
    return header_lines(config, state) if state is not None else []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "llm_target" not in metafunc.fixturenames:
        return
    targets = get_session(metafunc.config).selected
    if "llm_concurrency" in metafunc.fixturenames:
        pairs = [pytest.param(t, c, id=f"{t.name}-c{c}") for t in targets for c in t.concurrency]
        pairs = pairs or [pytest.param(None, 0, id="no-target")]
        metafunc.parametrize(("llm_target", "llm_concurrency"), pairs, indirect=["llm_target"], scope="session")
        return
    params = [pytest.param(t, id=t.name) for t in targets] or [pytest.param(None, id="no-target")]
    metafunc.parametrize("llm_target", params, indirect=True, scope="session")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    state = get_session(config)
    state.note_collected(baseline_id(item) for item in items)  # the ids baseline entries use
    for item in items:
        for marker in item.iter_markers("slo"):
            if marker.args:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.slo takes keyword arguments only, got {marker.args!r}")
            try:
                validate_limits(marker.kwargs, f"{item.nodeid}: @pytest.mark.slo")
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
        markers.apply_gpu_marker(item, state.hardware)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(SESSION_KEY, None)
    if state is not None:
        state.shutdown()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(SESSION_KEY, None)
    if state is not None:
        report.terminal_summary(terminalreporter, state)
