"""Baseline files: direction-aware comparison, atomic update, corrupt and foreign files refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve.store.baselines import BaselineError, BaselineStore, round_significant
from pytest_llmserve.settings.config import Tolerance

TOL = {"ttft_p95_ms": Tolerance(rel=0.1, abs=1.0), "output_tok_s": Tolerance(rel=0.1)}


def test_missing_baseline_is_reported_missing(tmp_path):
    store = BaselineStore(tmp_path, "cpu-2c")
    rows = store.compare("t", "suite::test", {"ttft_p95_ms": 10.0}, TOL)
    assert [r.verdict for r in rows] == ["missing"]


def test_update_writes_sorted_rounded_json_and_compare_reads_it_back(tmp_path):
    store = BaselineStore(tmp_path, "cpu-2c", update=True)
    rows = store.compare("t", "s::b", {"ttft_p95_ms": 10.123456, "output_tok_s": 999.87654}, TOL)
    assert {r.verdict for r in rows} == {"recorded"}
    store.record("t", "s::a", {"ttft_p95_ms": 1.0})
    path = tmp_path / "cpu-2c" / "t.json"
    data = json.loads(path.read_text())
    assert list(data["entries"]) == ["s::a", "s::b"]
    assert data["entries"]["s::b"] == {"output_tok_s": 999.9, "ttft_p95_ms": 10.12}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    change = store.changes[-1]
    assert change.old is None and change.new == {"ttft_p95_ms": 1.0}


def test_comparison_is_direction_aware(tmp_path):
    BaselineStore(tmp_path, "hw", update=True).record("t", "x", {"ttft_p95_ms": 100.0, "output_tok_s": 1000.0})
    store = BaselineStore(tmp_path, "hw")
    slower = store.compare("t", "x", {"ttft_p95_ms": 150.0, "output_tok_s": 500.0}, TOL)
    assert {r.metric: r.verdict for r in slower} == {"ttft_p95_ms": "regression", "output_tok_s": "regression"}
    faster = store.compare("t", "x", {"ttft_p95_ms": 50.0, "output_tok_s": 2000.0}, TOL)
    assert {r.verdict for r in faster} == {"improvement"}
    within = store.compare("t", "x", {"ttft_p95_ms": 105.0, "output_tok_s": 950.0}, TOL)
    assert {r.verdict for r in within} == {"ok"}
    assert within[1].bound == pytest.approx(111.0)


@pytest.mark.parametrize("content", ["{not json", '{"entries": {"x": {"m": "fast"}}}', '{"entries": []}', "[]"])
def test_corrupt_file_is_a_clear_error_and_never_overwritten(tmp_path, content):
    path = tmp_path / "hw" / "t.json"
    path.parent.mkdir()
    path.write_text(content)
    store = BaselineStore(tmp_path, "hw", update=True)
    with pytest.raises(BaselineError, match=r"is corrupt .*not modified.*--update-baselines"):
        store.compare("t", "x", {"ttft_p95_ms": 1.0}, TOL)
    assert path.read_text() == content


def test_file_recorded_for_other_hardware_is_refused(tmp_path):
    BaselineStore(tmp_path, "h100-80gb-x1", update=True).record("t", "x", {"ttft_p95_ms": 1.0})
    (tmp_path / "cpu-2c").mkdir()
    (tmp_path / "h100-80gb-x1" / "t.json").rename(tmp_path / "cpu-2c" / "t.json")
    with pytest.raises(BaselineError, match="recorded on hardware 'h100-80gb-x1'.*refused"):
        BaselineStore(tmp_path, "cpu-2c").lookup("t", "x")


def test_other_hardware_labels_are_named_for_a_missing_entry(tmp_path):
    BaselineStore(tmp_path, "h100-80gb-x1", update=True).record("t", "x", {"ttft_p95_ms": 1.0})
    assert BaselineStore(tmp_path, "cpu-2c").other_hardware_with("t", "x") == ["h100-80gb-x1"]


def test_unused_entries_are_those_of_collected_modules_without_a_test(tmp_path):
    writer = BaselineStore(tmp_path, "hw", update=True)
    for test_id in ("suite.py::kept", "suite.py::gone", "other.py::elsewhere"):
        writer.record("t", test_id, {"ttft_p95_ms": 1.0})
    store = BaselineStore(tmp_path, "hw")
    unused = store.unused(["t"], {"suite.py::kept"})
    assert [test_id for _, test_id in unused] == ["suite.py::gone"]


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from(["ttft_p95_ms", "itl_p95_ms", "output_tok_s"]),
                       st.floats(1e-3, 1e7, allow_nan=False), min_size=1))
def test_write_then_read_round_trips_to_four_significant_digits(tmp_path_factory, metrics):
    root = tmp_path_factory.mktemp("b")
    BaselineStore(root, "hw", update=True).record("t", "x", metrics)
    back = BaselineStore(root, "hw").lookup("t", "x")
    assert back is not None and set(back) == set(metrics)
    for key, value in metrics.items():
        assert back[key] == pytest.approx(value, rel=1e-3)
        assert back[key] == round_significant(value)
