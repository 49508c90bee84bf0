"""pytest-xdist: a GPU slice per worker, restarted workers refused a GPU, results and baselines merged on the controller."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmserve.store.baselines import BaselineStore
from pytest_llmserve.settings.config import LlmserveConfig, Target
from pytest_llmserve.hardware import inventory_from_env_or_option
from pytest_llmserve.servers.lifecycle import ServerPool
from pytest_llmserve.servers.vllm import VllmBackend
from pytest_llmserve.session import LlmserveSession, ResultEntry
from pytest_llmserve.testing import Script, TruthServer
from pytest_llmserve.integrations.xdist import (
    WorkerSlot,
    apply_slot,
    merge_worker_output,
    slot_for_worker,
    worker_output,
)

pytest.importorskip("xdist")

PLAN = ["0,1", "2,3"]


def _fake_x4():
    return inventory_from_env_or_option("fake:h100-80gb-x4", environ={})


def _session(tmp_path: Path, worker: str | None = None) -> LlmserveSession:
    return LlmserveSession(
        config=LlmserveConfig(), selected=[], hardware=_fake_x4(), store=BaselineStore(tmp_path, "h100-80gb-x4"),
        pool=ServerPool(log_dir=tmp_path), requests_override=None, report_json=None, report_md=None,
        xdist_worker=worker,
    )


# ------------------------------------------------------------------ slot policy, no subprocesses
def test_worker_gwk_gets_slice_k_and_a_restarted_worker_is_refused_a_gpu():
    assert slot_for_worker("gw0", PLAN) == WorkerSlot("gw0", "0,1")
    assert slot_for_worker("gw1", PLAN) == WorkerSlot("gw1", "2,3")
    for late in ("gw2", "gw17", "custom"):
        slot = slot_for_worker(late, PLAN)
        assert slot.visible_devices == ""  # hides every GPU
        assert f"xdist worker {late} gets no GPU slice" in slot.refusal
        assert "crashed" in slot.refusal and "Rerun the session" in slot.refusal


def test_cpu_only_machine_sets_no_slice_even_for_a_restarted_worker(tmp_path):
    assert slot_for_worker("gw5", None) == WorkerSlot("gw5", None)
    state = _session(tmp_path)
    environ = {"CUDA_VISIBLE_DEVICES": "untouched"}
    apply_slot(state, WorkerSlot("gw5", None), environ)
    assert environ == {"CUDA_VISIBLE_DEVICES": "untouched"}
    assert state.xdist_worker == "gw5" and state.hardware.inventory.gpu_count == 4


def test_slice_narrows_the_marker_inventory_but_keeps_the_baseline_label(tmp_path):
    state = _session(tmp_path)
    environ: dict[str, str] = {}
    apply_slot(state, slot_for_worker("gw1", PLAN), environ)
    assert environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert [g.index for g in state.hardware.inventory.gpus] == [2, 3]
    assert "xdist gw1 slice" in state.hardware.inventory.source
    assert state.hardware.label == "h100-80gb-x4"


def test_refused_worker_sees_no_gpu_and_the_marker_reason_says_why(tmp_path):
    from pytest_llmserve.hardware import GpuRequirement

    state = _session(tmp_path)
    environ: dict[str, str] = {}
    apply_slot(state, slot_for_worker("gw2", PLAN), environ)
    assert environ["CUDA_VISIBLE_DEVICES"] == ""
    reason = GpuRequirement(count=1).unmet_reason(state.hardware.inventory)
    assert "found 0 GPUs" in reason and "gw2 gets no GPU slice" in reason


def test_a_vllm_server_started_in_the_worker_inherits_its_slice(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # restored after the test
    import os

    apply_slot(_session(tmp_path), slot_for_worker("gw1", PLAN), os.environ)
    target = Target(name="m", kind="vllm", model="/models/m", env={"OTHER": "1"})
    env = VllmBackend().plan(target, 8000, tmp_path).env
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["OTHER"] == "1"


def test_controller_merge_keeps_collection_order_usage_and_names_leftovers_by_worker(tmp_path, pytestconfig):
    order = ["m.py::a", "m.py::b", "m.py::c"]
    BaselineStore(tmp_path, "h100-80gb-x4").record("t", "m.py::gone", {"ttft_p95_ms": 1.0})
    BaselineStore(tmp_path, "h100-80gb-x4").record("t", "m.py::c-custom", {"ttft_p95_ms": 1.0})
    outputs = []
    for worker, nodeids in (("gw0", ["m.py::c"]), ("gw1", ["m.py::b", "m.py::a"])):
        state = _session(tmp_path, worker)
        state.note_collected(order)
        for n in nodeids:
            state.record(ResultEntry(n, "t", "slo", True, f"table {n}", {"metrics": {"x": float("nan")}}))
        state.store.lookup("t", f"{nodeids[0]}-custom")
        state.store.record("t", nodeids[0], {"ttft_p95_ms": 1.0})
        state.note_leftovers({"t": [123]} if worker == "gw1" else {})
        outputs.append(json.loads(worker_output(state, pytestconfig, order)))
    controller = _session(tmp_path)
    for payload in outputs:
        merge_worker_output(controller, payload, pytestconfig)
    assert [e.nodeid for e in controller.results] == order
    assert controller.results[0].table == "table m.py::a"
    assert controller.collected_ids == set(order)
    assert sorted(c.test_id for c in controller.store.changes) == ["m.py::b", "m.py::c"]
    assert controller.leftovers == {"t on gw1": [123]}
    # m.py::c-custom was looked up on gw0 only: without the merged usage it would count as unused
    assert [test_id for _, test_id in controller.store.unused(["t"], controller.collected_ids)] == ["m.py::gone"]


def test_controller_reports_the_capabilities_and_refusals_its_workers_probed(tmp_path, pytestconfig):
    from pytest_llmserve.servers.capabilities import Capabilities

    caps = Capabilities(readiness="/v1/models", token_id_prompts=False, notes=("token_id_prompts: HTTP 400",))
    controller = _session(tmp_path)
    for worker, probed, failures in (("gw0", {"a": caps}, {}), ("gw1", {}, {"b": "target 'b': not ready"})):
        state = _session(tmp_path, worker)
        state.pool.probed.update(probed)
        state.pool.failures.update(failures)
        merge_worker_output(controller, json.loads(worker_output(state, pytestconfig, [])), pytestconfig)
    assert controller.pool.probed == {"a": caps}
    assert controller.pool.failures == {"b": "target 'b': not ready"}


# ------------------------------------------------------------------ real xdist runs (pytester, subprocesses)
@pytest.fixture(scope="module")
def truth_url():
    # ITL well above scheduling noise, so the client self-check stays valid on a busy 2-core machine
    with TruthServer(Script(ttft_ms=10, itl_ms=20)) as server:
        yield server.url


def _config(url: str) -> str:
    return f'[[targets]]\nname = "truth"\nkind = "openai"\nurl = "{url}"\nmodel = "truth-model"\n'


LOAD_TEST = """
def test_{name}(llm_load):
    llm_load(concurrency=2, requests=4, warmup=0, input_len=8, output_len=3).assert_slo()
"""
CUSTOM_RECORD = """
from pytest_llmserve.session import get_session

def test_custom(request):
    get_session(request.config).store.record("truth", "test_perf.py::custom-entry", {"ttft_p95_ms": 1.0})
"""
CUSTOM_LOOKUP = """
from pytest_llmserve.session import get_session

def test_custom(request):
    assert get_session(request.config).store.lookup("truth", "test_perf.py::custom-entry") is not None
"""
# Two tests, one per worker, meet at a file barrier and then write 25 entries each into the same file.
CONCURRENT = """
import os, time
from pathlib import Path
from pytest_llmserve.session import get_session

def _stress(request, k):
    here = Path(str(request.config.rootpath))
    (here / f"ready-{k}").touch()
    deadline = time.monotonic() + 20
    while not (here / f"ready-{1 - k}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    store = get_session(request.config).store
    for i in range(25):
        store.record("truth", f"test_concurrent.py::s{k}-{i}", {"ttft_p95_ms": float(i)})

def test_stress_0(request):
    _stress(request, 0)

def test_stress_1(request):
    _stress(request, 1)
"""


def test_parallel_workers_update_one_baseline_file_and_the_controller_reports_everything_once(pytester, truth_url):
    pytester.makefile(".toml", llmserve=_config(truth_url))
    perf = "".join(LOAD_TEST.format(name=n) for n in "abcd") + CUSTOM_RECORD
    pytester.makepyfile(test_perf=perf, test_concurrent=CONCURRENT)
    result = pytester.runpytest_subprocess("-n", "2", "-v", "--update-baselines", "--llmserve-repeats", "1",
                                           "--llmserve-hardware", "fake:cpu-2c", "--benchmark-json", "bench.json",
                                           "--llmserve-report-json", "report.json")
    result.assert_outcomes(passed=7)
    out = result.stdout.str()
    assert "[gw0]" in out and "[gw1]" in out
    assert "llmserve xdist: no GPU slices" in out
    data = json.loads((pytester.path / "baselines" / "cpu-2c" / "truth.json").read_text())
    load_ids = [f"test_perf.py::test_{n}[truth]" for n in "abcd"]
    stress_ids = [f"test_concurrent.py::s{k}-{i}" for k in (0, 1) for i in range(25)]
    assert sorted(data["entries"]) == sorted(load_ids + stress_ids + ["test_perf.py::custom-entry"])
    assert not list((pytester.path / "baselines" / "cpu-2c").glob("*.tmp"))
    # the controller printed every worker's SLO table and baseline change, each once
    assert out.count("llmserve summary") == 1
    for nodeid in load_ids:
        assert out.count(f"SLO {nodeid} |") == 1
        assert out.count(f"truth.json {nodeid}\n") == 1
    assert out.count("truth.json test_concurrent.py::s1-24\n") == 1
    report = json.loads((pytester.path / "report.json").read_text())
    assert [r["nodeid"] for r in report["results"]] == load_ids
    assert len(report["baseline_changes"]) == 55

    # second session: test_d is gone; the custom entry is used by a lookup on some worker
    perf = "".join(f"\ndef test_{n}(llm_target):\n    pass\n" for n in "abc") + CUSTOM_LOOKUP
    pytester.makepyfile(test_perf=perf)
    (pytester.path / "test_concurrent.py").unlink()
    result = pytester.runpytest_subprocess("-n", "2", "--llmserve-hardware", "fake:cpu-2c")
    result.assert_outcomes(passed=4)
    out = result.stdout.str()
    assert out.count("1 unused baseline entries") == 1
    assert out.count("test_perf.py::test_d[truth]") == 1
    assert "custom-entry" not in out and "test_concurrent.py" not in out

    # pytest-benchmark is off under xdist, yet the first session's JSON holds every worker's load run
    bench = json.loads((pytester.path / "bench.json").read_text())
    assert sorted(b["fullname"] for b in bench["benchmarks"]) == sorted(f"{i}::llm_load#1" for i in load_ids)
    assert all(b["stats"]["rounds"] == 4 for b in bench["benchmarks"])


SLICE_TESTS = """
import json, os
import pytest
from pytest_llmserve.settings.config import Target
from pytest_llmserve.servers.vllm import VllmBackend
from pytest_llmserve.session import get_session

@pytest.mark.parametrize("k", range(4))
def test_where(request, k, tmp_path):
    state = get_session(request.config)
    env = VllmBackend().plan(Target(name="m", kind="vllm", model="m"), 8000, tmp_path).env
    worker = os.environ["PYTEST_XDIST_WORKER"]
    (request.config.rootpath / f"{worker}-{k}.json").write_text(json.dumps({
        "environ": os.environ["CUDA_VISIBLE_DEVICES"], "server": env["CUDA_VISIBLE_DEVICES"],
        "label": state.hardware.label, "gpus": [g.index for g in state.hardware.inventory.gpus]}))

@pytest.mark.gpu(count=3)
def test_needs_three_gpus():
    pass
"""


def test_each_worker_gets_its_own_gpu_slice_and_too_many_workers_is_a_usage_error(pytester):
    pytester.makepyfile(test_slices=SLICE_TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "-rs",
                                           "--llmserve-hardware", "fake:h100-80gb-x4")
    result.assert_outcomes(passed=4, skipped=1)
    result.stdout.fnmatch_lines([
        "*llmserve xdist: one GPU slice and one server per worker: gw0 CUDA_VISIBLE_DEVICES=0,1; "
        "gw1 CUDA_VISIBLE_DEVICES=2,3",
        "*requires 3x GPU; found 2 GPUs*xdist gw* slice*",
    ])
    seen = {p.name.split("-")[0]: json.loads(p.read_text()) for p in pytester.path.glob("gw*.json")}
    assert seen == {
        "gw0": {"environ": "0,1", "server": "0,1", "label": "h100-80gb-x4", "gpus": [0, 1]},
        "gw1": {"environ": "2,3", "server": "2,3", "label": "h100-80gb-x4", "gpus": [2, 3]},
    }
    result = pytester.runpytest_subprocess("-n", "8", "--llmserve-hardware", "fake:h100-80gb-x4")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*8 xdist workers but only 4 GPUs*run with -n 4 or fewer*"])


CRASH_TESTS = """
import os

def test_a_crashes():
    os._exit(1)

def test_b_server(llm_server):
    pass

def test_c_plain():
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
"""


def test_replacement_for_a_crashed_worker_gets_no_gpu_and_its_server_tests_fail_with_the_reason(pytester):
    pytester.makefile(".toml", llmserve=_config("http://127.0.0.1:9"))
    pytester.makepyfile(test_crash=CRASH_TESTS)
    result = pytester.runpytest_subprocess("-n", "1", "--llmserve-hardware", "fake:h100-80gb-x4")
    result.assert_outcomes(passed=1, failed=1, errors=1)  # the refusal fails test_b at setup
    result.stdout.fnmatch_lines(["*replacing crashed worker gw0*",
                                 "*xdist worker gw1 gets no GPU slice: only gw0 has one*"])
