"""CUDA graphs from timing alone, on step times recorded on the H200 (transformers serve, graphs on / off)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve.checks.graph_timing import decide, decide_sweep
from pytest_llmserve.gates.sweep import SweepPoint, SweepResult, SweepTarget

DATA = Path(__file__).parent / "data" / "timing"
RUNS = ("h200_hf_serve_graphs.json", "h200_hf_serve_graphs_seed1.json")  # two device calls, two machines


def recorded(run: str = RUNS[0]) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    steps = json.loads((DATA / run).read_text())["step_ms"]
    return ({int(c): v for c, v in steps["graphs-on"].items()}, {int(c): v for c, v in steps["graphs-off"].items()})


def test_graphs_on_server_is_called_on_against_its_eager_control():
    on, off = recorded()
    v = decide(on, off, replicas=50)
    assert v.verdict == "on", v.table()
    assert [lv.call for lv in v.levels] == ["graphed"] * 6
    assert v.disagreement is not None and v.disagreement <= 0.1
    assert "on" in v.describe() and "c=1,2,4,8,16,32" in v.describe()


@pytest.mark.parametrize("run", RUNS)
def test_swapped_labels_never_say_on(run):
    on, off = recorded(run)
    v = decide(off, on, replicas=50)
    assert v.verdict == "off", v.table()


def test_the_replicate_run_on_another_machine_is_called_on_too():
    on, off = recorded(RUNS[1])
    v = decide(on, off, replicas=50)
    assert v.verdict == "on", v.table()
    assert sum(lv.call == "graphed" for lv in v.levels) >= 4


def test_two_halves_of_the_eager_server_are_not_called_on():
    _, off = recorded()
    for shift in (0, 1):
        a = {c: x[shift::2] for c, x in off.items()}
        b = {c: x[1 - shift::2] for c, x in off.items()}
        assert decide(a, b, replicas=0).verdict in ("off", "inconclusive")


def test_graphs_lost_above_a_batch_size_is_partial_and_names_the_levels():
    # graphs replay up to c=8 and the server runs eagerly above (a capture limit, or a fall-back under load)
    on, off = recorded()
    target = {c: (on[c][:16] if c <= 8 else off[c][::2]) for c in on}
    control = {c: off[c][1::2] for c in off}
    v = decide(target, control, replicas=0)
    assert v.verdict == "partial", v.table()
    assert {lv.concurrency for lv in v.levels if lv.call == "graphed"} == {1, 2, 4, 8}
    assert all(lv.call != "graphed" for lv in v.levels if lv.concurrency > 8)


def test_levels_with_too_few_requests_are_left_out_and_said():
    on, off = recorded()
    v = decide({1: on[1][:3], 2: on[2]}, {1: off[1], 2: off[2]}, replicas=0)
    assert [lv.concurrency for lv in v.levels] == [2]
    assert any("c=1" in n and "fewer than" in n for n in v.notes)


def test_nothing_to_compare_says_what_to_do():
    with pytest.raises(ValueError, match="same levels"):
        decide({1: [1.0] * 10}, {2: [1.0] * 10})
    with pytest.raises(ValueError, match="factor > 1"):
        decide({1: [1.0] * 10}, {1: [1.0] * 10}, min_speedup=1.0)


def test_decides_from_a_sweep_and_refuses_a_sweep_without_step_times():
    on, off = recorded()
    points = tuple(SweepPoint(name, c, 0, {}, len(xs), len(xs), {}, 1.0, True, samples={"step_ms": tuple(xs)})
                   for name, data in (("on", on), ("off", off)) for c, xs in data.items())
    sweep = SweepResult((SweepTarget("on", "http://a", "m"), SweepTarget("off", "http://b", "m")),
                        tuple(sorted(on)), points, {})
    assert decide_sweep(sweep, "on", "off", replicas=0).verdict == "on"
    old = SweepResult(sweep.targets, sweep.concurrencies,
                      tuple(SweepPoint(p.target, p.concurrency, 0, {}, 1, 1, {}, 1.0, True) for p in points), {})
    with pytest.raises(ValueError, match="no step_ms samples"):
        decide_sweep(old, "on", "off")


@settings(max_examples=15, deadline=None)
@given(st.floats(min_value=0.01, max_value=100.0))
def test_verdict_does_not_depend_on_the_unit_of_time(k):
    on, off = recorded()
    scaled = decide({c: [x * k for x in v] for c, v in on.items()}, {c: [x * k for x in v] for c, v in off.items()},
                    replicas=0)
    assert scaled.verdict == decide(on, off, replicas=0).verdict
