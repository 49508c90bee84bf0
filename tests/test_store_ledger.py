"""One store: accuracy references share the baselines' ledger, so their changes, unused entries and xdist
merge show in the end-of-run report beside the baselines'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmserve.store.accuracy_refs import AccuracyReferences, unused_references
from pytest_llmserve.store.baselines import BaselineStore
from pytest_llmserve.store.entries import EntryChange, StoreLedger
from pytest_llmserve.evidence.precision import PrecisionInfo

BF16 = PrecisionInfo("bfloat16", None, None, "declared", "test")
FP8 = PrecisionInfo("bfloat16", "fp8", None, "declared", "test")
SUMMARY = {"accuracy": 0.5, "mean_loglik": -1.0, "n": 10}

# A stand-in for the accuracy suite: checks (or records) references of the tasks named in TASKS.
REFS_TEST = """
from pytest_llmserve.store.accuracy_refs import AccuracyReferences
from pytest_llmserve.evidence.precision import PrecisionInfo
from pytest_llmserve.session import get_session

TASKS = {tasks!r}

def test_refs(request):
    refs = AccuracyReferences.in_store(get_session(request.config).store, "tiny-llama")
    info = PrecisionInfo("bfloat16", None, None, "declared", "test")
    for task in TASKS:
        row = refs.check(task, "sha-" + task, info, {{"accuracy": {accuracy}, "mean_loglik": -1.0, "n": 10}})
        assert row.verdict in ("recorded", "ok"), row.render()
"""


def _refs(tmp_path: Path, ledger: StoreLedger, update: bool = False) -> AccuracyReferences:
    store = BaselineStore(tmp_path, "cpu-2c", update=update, ledger=ledger)
    return AccuracyReferences.in_store(store, "tiny-llama")


# ------------------------------------------------------------------ the store, no pytest session
def test_an_accuracy_reference_update_is_a_change_in_the_baselines_ledger(tmp_path):
    store = BaselineStore(tmp_path, "cpu-2c", update=True)
    store.record("t", "m.py::x", {"ttft_p95_ms": 1.0})
    AccuracyReferences.in_store(store, "tiny-llama").check("next_token", "a" * 64, BF16, SUMMARY)
    change = store.changes[-1]
    assert change.path == tmp_path / "cpu-2c" / "accuracy" / "tiny-llama.json"
    assert change.test_id == "next_token|bfloat16|none|none" and change.old is None
    assert change.new == {"accuracy": 0.5, "mean_loglik": -1.0, "n": 10, "task_sha256": "a" * 12}
    assert [c.test_id for c in store.changes] == ["m.py::x", "next_token|bfloat16|none|none"]


def test_an_unchecked_task_of_a_checked_file_and_precision_is_unused(tmp_path):
    writer = _refs(tmp_path, StoreLedger(), update=True)
    for task in ("kept", "gone"):
        writer.check(task, "s", BF16, SUMMARY)
    writer.check("other_precision", "s", FP8, SUMMARY)
    reader = _refs(tmp_path, ledger := StoreLedger())
    reader.check("kept", "s", BF16, SUMMARY)
    store = BaselineStore(tmp_path, "cpu-2c", ledger=ledger)
    # the fp8 entry is left alone: its precision was not checked (a target left out of a partial run)
    assert unused_references(store) == [(reader.path, "gone|bfloat16|none|none")]
    assert unused_references(BaselineStore(tmp_path, "cpu-2c")) == []  # a file no test read is out of scope


def test_a_workers_ledger_survives_the_trip_to_the_controller(tmp_path):
    worker = StoreLedger()
    _refs(tmp_path, worker, update=True).check("next_token", "s", BF16, SUMMARY)
    controller = StoreLedger()
    controller.merge(json.loads(json.dumps(worker.to_dict())))
    assert controller.changes == worker.changes and controller.used == worker.used
    assert isinstance(controller.changes[0], EntryChange) and isinstance(controller.changes[0].path, Path)


# ------------------------------------------------------------------ through the plugin (pytester)
def _run(pytester: pytest.Pytester, tasks: list[str], *args: str, accuracy: float = 0.5) -> pytest.RunResult:
    pytester.makepyfile(test_refs=REFS_TEST.format(tasks=tasks, accuracy=accuracy))
    return pytester.runpytest_subprocess("--llmserve-hardware", "fake:cpu-2c", "-p", "no:cacheprovider",
                                         "--llmserve-report-json", "r.json", "--llmserve-report-md", "r.md", *args)


def test_accuracy_reference_changes_appear_in_the_summary_and_both_reports(pytester):
    _run(pytester, ["a"], "--update-baselines").assert_outcomes(passed=1)
    result = _run(pytester, ["a"], "--update-baselines", accuracy=0.75)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["baselines updated (old -> new):", "  accuracy/tiny-llama.json a|bfloat16|none|none",
                                 "    accuracy: 0.5 -> 0.75 (+50.0%)", "    (3 metrics unchanged)"])
    changes = json.loads((pytester.path / "r.json").read_text())["baseline_changes"]
    assert [(Path(c["file"]).name, c["test_id"], c["new"]["accuracy"]) for c in changes] == [
        ("tiny-llama.json", "a|bfloat16|none|none", 0.75)]
    assert "`accuracy/tiny-llama.json` `a|bfloat16|none|none`: accuracy: 0.5 -> 0.75" in (pytester.path / "r.md").read_text()


def test_an_unused_accuracy_reference_is_listed_at_the_end(pytester):
    _run(pytester, ["a", "b"], "--update-baselines").assert_outcomes(passed=1)
    result = _run(pytester, ["a"])
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["1 unused accuracy reference entries (their file and precision were checked, "
                                 "their task was not; delete them or restore the task):",
                                 "  *tiny-llama.json: b|bfloat16|none|none"])
    assert "a|bfloat16" not in result.stdout.str().split("unused accuracy reference")[1]
    data = json.loads((pytester.path / "r.json").read_text())
    assert [u["key"] for u in data["unused_accuracy_references"]] == ["b|bfloat16|none|none"]
    assert "1 unused accuracy reference entries: `accuracy/tiny-llama.json` `b|bfloat16|none|none`" in (
        pytester.path / "r.md").read_text()


def test_an_xdist_workers_accuracy_reference_change_reaches_the_controller(pytester):
    pytest.importorskip("xdist")
    result = _run(pytester, ["a"], "-n", "1", "--update-baselines")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert out.count("accuracy/tiny-llama.json a|bfloat16|none|none") == 1
    assert json.loads((pytester.path / "r.json").read_text())["baseline_changes"][0]["test_id"] == "a|bfloat16|none|none"
    # and the worker's use of it reaches the controller's unused detection
    pytester.makepyfile(test_refs=REFS_TEST.format(tasks=["a", "b"], accuracy=0.5))
    pytester.runpytest_subprocess("--llmserve-hardware", "fake:cpu-2c", "-p", "no:cacheprovider",
                                  "--update-baselines").assert_outcomes(passed=1)
    result = _run(pytester, ["a"], "-n", "1")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["1 unused accuracy reference entries*", "  *tiny-llama.json: b|bfloat16|none|none"])
