"""The baseline gate's statistics and store: interval coverage with run-to-run spread, direction, NaN and
empty samples, tiny n, the sidecar (corrupt, truncated), request-shape refusal, old one-number entries."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve.store.baseline_samples import check_shape, shape_of, sidecar_path
from pytest_llmserve.store.baselines import BaselineError, BaselineStore
from pytest_llmserve.checks.baseline_gate import Round, all_precise, compare_rounds
from pytest_llmserve.settings.config import ConfigError, parse_config
from pytest_llmserve.load import LoadSpec
from pytest_llmserve.load.workloads import PROFILES, workload


def rounds(rng, k, n, scale=1.0, tau=0.03, tput=1000.0):
    """k rounds of n requests: TTFT 20 ms + U(0, 10); each round shifted by its own run effect (SD tau)."""
    out = []
    for _ in range(k):
        u = 1 + tau * rng.standard_normal()
        ttft = (20 + rng.uniform(0, 10, n)) * scale * u
        out.append(Round.of({"ttft_ms": ttft}, {"itl_p50_ms": 2.0 * scale * u, "output_tok_s": tput / (scale * u)}))
    return out


def cmp(metric, base, cand, margin=0.1, alpha=0.05, power=0.9):
    return compare_rounds(metric, base, cand, higher_is_better=metric == "output_tok_s", margin=margin,
                          alpha=alpha, power=power)


@pytest.mark.parametrize("metric", ["ttft_p95_ms", "itl_p50_ms"])
def test_interval_covers_a_zero_change_at_its_level_when_runs_drift(metric):
    # the run effect (3 %) dwarfs the within-run noise of 64 requests: an interval of within-run noise
    # alone would miss 0 far more often than 10 % of the time
    rng = np.random.default_rng(7)
    sims, missed = 150, 0
    for _ in range(sims):
        c = cmp(metric, rounds(rng, 5, 64), rounds(rng, 2, 64))
        missed += not c.check.change.contains(0.0)
    nominal = 1 - c.check.change.confidence  # two-sided 1 − 2α = 90 %
    assert missed / sims <= nominal + 3 * math.sqrt(nominal * (1 - nominal) / sims)


def test_ignoring_run_to_run_spread_would_not_cover():
    """The same simulation through a within-run-only comparison misses 0 far too often (why τ is in)."""
    from pytest_llmserve.checks.promotion import compare_samples

    rng = np.random.default_rng(7)
    sims, missed = 60, 0
    for _ in range(sims):
        b, c = rounds(rng, 5, 64), rounds(rng, 2, 64)
        pooled = compare_samples("ttft", np.concatenate([r.samples["ttft_ms"] for r in c]),
                                 np.concatenate([r.samples["ttft_ms"] for r in b]), n_resamples=500, min_samples=1)
        missed += not pooled.change.contains(0.0)
    assert missed / sims > 0.2


def test_direction_slower_latency_and_lower_throughput_are_regressions():
    rng = np.random.default_rng(1)
    base = rounds(rng, 5, 256, tau=0.005)
    slower = rounds(rng, 3, 256, scale=1.3, tau=0.005)
    faster = rounds(rng, 3, 256, scale=0.7, tau=0.005)
    assert {m: cmp(m, base, slower).verdict for m in ("ttft_p95_ms", "itl_p50_ms", "output_tok_s")} == {
        "ttft_p95_ms": "regression", "itl_p50_ms": "regression", "output_tok_s": "regression"}
    assert {m: cmp(m, base, faster).verdict for m in ("ttft_p95_ms", "itl_p50_ms", "output_tok_s")} == {
        "ttft_p95_ms": "improvement", "itl_p50_ms": "improvement", "output_tok_s": "improvement"}
    same = rounds(rng, 3, 256, tau=0.005)
    assert cmp("ttft_p95_ms", base, same).verdict == "pass"


def test_every_check_carries_change_interval_margin_and_detectable_change():
    rng = np.random.default_rng(2)
    c = cmp("ttft_p95_ms", rounds(rng, 5, 128), rounds(rng, 2, 128))
    d = c.to_dict()
    assert d["margin"] == 0.1 and d["min_detectable"] > 0 and d["change_ci"][0] < d["change"] < d["change_ci"][1]
    assert d["baseline_ci95"][0] < d["baseline"] < d["baseline_ci95"][1] and d["rounds"] == [5, 2]
    assert d["requests"] == [640, 256] and math.isfinite(d["run_to_run"])
    assert "%" in c.change_text() and c.gated


def test_nan_samples_are_dropped_and_an_absent_family_is_not_compared():
    r = Round.of({"ttft_ms": [1.0, float("nan"), 2.0, float("inf")]}, {"output_tok_s": float("nan")})
    assert r.samples["ttft_ms"].tolist() == [1.0, 2.0] and "output_tok_s" not in r.values
    empty = [Round.of({"ttft_ms": []}, {})]
    assert cmp("ttft_p95_ms", empty, empty) is None
    assert cmp("output_tok_s", [r], [r]) is None


def test_tiny_samples_are_inconclusive_and_say_what_would_decide():
    one = [Round.of({"ttft_ms": [10.0]}, {"output_tok_s": 100.0, "itl_p50_ms": 2.0})]
    p95 = cmp("ttft_p95_ms", one, one)
    assert p95.verdict == "inconclusive" and not p95.precise
    per_run = cmp("output_tok_s", one, one)  # one round a side: no run-to-run spread to judge by
    assert per_run.verdict == "inconclusive" and "--llmserve-repeats" in per_run.check.reason
    rng = np.random.default_rng(3)
    few = cmp("ttft_p95_ms", rounds(rng, 8, 64), rounds(rng, 1, 16))
    assert few.verdict == "inconclusive" and "more requests" in few.check.reason
    # a baseline too small for a tail percentile: more candidate requests cannot help, re-recording can
    small = cmp("ttft_p95_ms", rounds(rng, 3, 16), rounds(rng, 8, 64))
    assert small.verdict == "inconclusive"
    assert "the baseline holds 48 requests, fewer than the 200 a p95 needs" in small.check.reason
    assert "--llmserve-repeats 13" in small.check.reason
    assert not all_precise([p95, per_run, few, small]) and all_precise([])


def test_more_requests_narrow_the_interval_until_it_is_precise():
    rng = np.random.default_rng(4)
    base = rounds(rng, 6, 128, tau=0.01)
    widths = [cmp("ttft_p95_ms", base, rounds(rng, k, 128, tau=0.01)).check.change.half_width for k in (1, 4, 12)]
    assert widths[0] > widths[1] > widths[2]
    assert cmp("ttft_p95_ms", base, rounds(rng, 12, 128, tau=0.01)).precise


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.5, 2.0), n=st.integers(2, 60), k=st.integers(1, 4))
def test_scaling_every_candidate_request_moves_the_estimate_by_exactly_that_factor(scale, n, k):
    rng = np.random.default_rng(n * 10 + k)
    base = rounds(rng, 3, n, tau=0.0)
    cand = [Round.of({"ttft_ms": r.samples["ttft_ms"] * scale}, {}) for r in base[:k]]
    pooled = np.concatenate([r.samples["ttft_ms"] for r in base[:k]])
    c = cmp("ttft_p50_ms", base, cand)
    expected = np.percentile(pooled * scale, 50) / np.percentile(np.concatenate([r.samples["ttft_ms"] for r in base]), 50)
    assert c.check.change.estimate == pytest.approx(expected - 1, rel=1e-9, abs=1e-12)
    assert c.check.change.low <= c.check.change.estimate <= c.check.change.high or math.isnan(c.check.change.low)
    if c.verdict == "regression":
        assert c.check.change.low > 0
    if c.verdict == "improvement":
        assert c.check.change.high < 0


# ----------------------------------------------------------------------------------------- store, sidecar


def _record(tmp_path, spec=LoadSpec(concurrency=2, input_len=8, output_len=4)):
    store = BaselineStore(tmp_path, "hw", update=True)
    rng = np.random.default_rng(0)
    rs = rounds(rng, 3, 8)
    entry = {"shape": shape_of(spec), "repeats": 3, "requests": 24,
             "metrics": {"ttft_p95_ms": {"value": 25.0, "ci95": [24.0, 26.0], "n": 24, "rounds": 3, "run_to_run": 0.03}}}
    store.record_entry("t", "s::x", entry, [{"samples": {"ttft_ms": r.samples["ttft_ms"].tolist()},
                                             "values": dict(r.values)} for r in rs])
    return store


def test_statistical_entry_round_trips_json_summary_and_gzip_sidecar(tmp_path):
    store = _record(tmp_path)
    path = tmp_path / "hw" / "t.json"
    data = json.loads(path.read_text())
    assert data["schema"] == 2 and data["entries"]["s::x"]["metrics"]["ttft_p95_ms"]["value"] == 25.0
    assert sidecar_path(path).name == "t.samples.json.gz"
    again = BaselineStore(tmp_path, "hw")
    assert again.lookup("t", "s::x") == {"ttft_p95_ms": 25.0} and len(again.rounds("t", "s::x")) == 3
    assert store.changes[-1].new == {"ttft_p95_ms": 25.0}


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "not json", "bad entries"])
def test_corrupt_or_truncated_sidecar_is_one_error_naming_it_and_nothing_is_overwritten(tmp_path, damage):
    _record(tmp_path)
    path = tmp_path / "hw" / "t.json"
    side = sidecar_path(path)
    good = side.read_bytes()
    bad = {"truncated": good[: len(good) // 2], "not gzip": b"hello",
           "not json": gzip.compress(b"{nope"),
           "bad entries": gzip.compress(json.dumps({"entries": {"s::x": [{"samples": {"ttft_ms": ["x"]}}]}}).encode())}[damage]
    side.write_bytes(bad)
    before = path.read_text()
    with pytest.raises(BaselineError, match=r"baseline sample file .*t\.samples\.json\.gz is corrupt.*not modified"):
        BaselineStore(tmp_path, "hw").rounds("t", "s::x")
    with pytest.raises(BaselineError, match=r"t\.samples\.json\.gz is corrupt"):
        _record(tmp_path)  # recording over it refuses too
    assert side.read_bytes() == bad and path.read_text() == before


def test_missing_sidecar_rounds_are_an_error_saying_how_to_fix(tmp_path):
    _record(tmp_path)
    sidecar_path(tmp_path / "hw" / "t.json").unlink()
    with pytest.raises(BaselineError, match=r"has no rounds for s::x.*--update-baselines"):
        BaselineStore(tmp_path, "hw").rounds("t", "s::x")


def test_baseline_of_another_request_shape_is_refused_naming_both():
    entry = {"shape": shape_of(LoadSpec(concurrency=4, input_len=64, output_len=64))}
    with pytest.raises(BaselineError) as exc:
        check_shape(entry, LoadSpec(concurrency=4, input_len=64, output_len=128), "b/t.json", "s::x")  # type: ignore[arg-type]
    msg = str(exc.value)
    assert "output_len=64" in msg and "output_len=128" in msg and "output_len: 64 → 128" in msg
    check_shape(entry, LoadSpec(concurrency=4, input_len=64, output_len=64, requests=999, warmup=0), "b", "s::x")


def test_old_one_number_entries_are_still_read_beside_new_ones(tmp_path):
    BaselineStore(tmp_path, "hw", update=True).record("t", "old", {"ttft_p95_ms": 10.0})
    _record(tmp_path)
    store = BaselineStore(tmp_path, "hw")
    assert store.lookup("t", "old") == {"ttft_p95_ms": 10.0}
    assert [r.verdict for r in store.compare("t", "old", {"ttft_p95_ms": 100.0}, {})] == ["regression"]


@pytest.mark.parametrize("raw, key", [
    ({"margin": {"ttft_p95_ms": -1}}, "baseline_gate.margin.ttft_p95_ms = -1"),
    ({"margin": {"nope_ms": 0.1}}, "baseline_gate.margin.nope_ms = 0.1"),
    ({"inconclusive": "maybe"}, "baseline_gate.inconclusive = 'maybe'"),
    ({"alpha": 0.7}, "baseline_gate.alpha = 0.7"),
    ({"repeats": 0}, "baseline_gate.repeats = 0"),
    ({"budget": 3}, "baseline_gate.budget = 3"),
    ({"start_spread": 1.5}, "baseline_gate.start_spread = 1.5"),
    ({"start_spread": "5%"}, "baseline_gate.start_spread = '5%'"),
])
def test_gate_config_errors_name_file_key_and_value(raw, key):
    with pytest.raises(ConfigError, match=f"^pyproject.toml: tool.llmserve.{key}: "):
        parse_config({"baseline_gate": raw}, source="pyproject.toml", prefix="tool.llmserve")


def test_target_gate_settings_overlay_the_project_metric_by_metric():
    cfg = parse_config({"baseline_gate": {"margin": {"ttft_p50_ms": 0.2}, "budget_s": 30},
                        "targets": [{"name": "a", "kind": "openai", "url": "http://h:1",
                                     "baseline_gate": {"margin": {"ttft_p95_ms": 0.3}, "inconclusive": "fail",
                                                       "start_spread": 0.02}}]},
                       source="llmserve.toml")
    gate = cfg.gate(cfg.targets[0])
    assert gate.margins == {"ttft_p95_ms": 0.3, "itl_p50_ms": 0.1, "output_tok_s": 0.1, "ttft_p50_ms": 0.2}
    assert (gate.inconclusive, gate.budget_s) == ("fail", 30.0) and gate.alpha_per_metric == pytest.approx(0.05 / 4)
    assert gate.start_spread == 0.02 and cfg.baseline_gate.start_spread == 0.05  # the measured default (README)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_workloads_shape_is_recorded_as_json_and_matches_itself_after_reading_back(tmp_path, profile):
    # found on the H200: a multi-turn baseline failed to record ("Sessions is not JSON serializable")
    spec = workload(profile, max_model_len=2048, requests=16, warmup=0).spec
    store = _record(tmp_path, spec)
    entry = json.loads((tmp_path / "hw" / "t.json").read_text())["entries"]["s::x"]
    check_shape(entry, spec, tmp_path / "hw" / "t.json", "s::x")
    if profile == "multi-turn":
        assert entry["shape"]["sessions"].startswith("Sessions: 16 items, crc32 ")
        other = workload(profile, max_model_len=2048, requests=16, warmup=0, seed=1).spec
        with pytest.raises(BaselineError, match="sessions: "):
            check_shape(entry, other, tmp_path / "hw" / "t.json", "s::x")
    assert store.changes[-1].test_id == "s::x"
