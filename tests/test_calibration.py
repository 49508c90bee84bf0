"""Precision-calibrated equivalence: engine vs fp32 judged against HF-in-the-same-precision vs fp32."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve.checks.calibration import calibrate, profile
from pytest_llmserve.checks.equivalence import Continuation
from pytest_llmserve.checks.near_tie import EquivalenceSettings, ToleranceModel
from pytest_llmserve.checks.precision_parts import precision_parts
from pytest_llmserve.checks.cluster_stats import cluster_summary
from pytest_llmserve.settings.config import Target

STEPS = 24
VLLM_LOG = ("INFO Initializing a V1 LLM engine (v0.32.0) with config: model='m', dtype=torch.bfloat16, "
            "quantization=None, enforce_eager=False, kv_cache_dtype={kv}, device_config=cpu\n")


def _reference(seed: int) -> Continuation:
    """fp32-like path: token 10+i wins by ~2 nats over 50+i; |logit| 10."""
    rng = np.random.default_rng(seed)
    tops = tuple({10 + i: -0.2, 50 + i: -2.2 - rng.random(), 90 + i: -4.0} for i in range(STEPS))
    return Continuation(tuple(10 + i for i in range(STEPS)), tops, (10.0,) * STEPS)


def _noisy(ref: Continuation, sd: float, seed: int, diverge_at: int | None = None) -> Continuation:
    """`ref` with logprob noise of `sd` nats; optionally taking the runner-up at step `diverge_at` (a near-tie)."""
    rng = np.random.default_rng(seed)
    tokens, tops = list(ref.tokens), []
    for i, top in enumerate(ref.top_logprobs):
        tops.append({t: lp + float(rng.normal(0, sd)) for t, lp in top.items()})
    if diverge_at is not None:
        r, c = tokens[diverge_at], 50 + diverge_at
        tops[diverge_at][c], tops[diverge_at][r] = tops[diverge_at][r] + 0.01, tops[diverge_at][r]
        tokens[diverge_at] = c
    return Continuation(tuple(tokens), tuple(tops))


def _sides(n: int, engine_sd: float, cal_sd: float, engine_diverge: int = 0, cal_diverge: int = 0):
    refs = [_reference(i) for i in range(n)]
    cal = [_noisy(r, cal_sd, 1000 + i, 12 if i < cal_diverge else None) for i, r in enumerate(refs)]
    eng = [_noisy(r, engine_sd, 2000 + i, 12 if i < engine_diverge else None) for i, r in enumerate(refs)]
    return refs, eng, cal


def test_an_engine_as_noisy_as_its_precision_passes_with_both_sides_reported():
    refs, eng, cal = _sides(48, engine_sd=0.01, cal_sd=0.01, engine_diverge=6, cal_diverge=6)
    result = calibrate(refs, eng, cal, label="HF bfloat16 (cpu)")
    assert result.passed and result.gated
    text = "\n".join(result.render())
    assert "HF bfloat16 (cpu)" in text and "divergence per token" in text and "6/48" in text


def test_logprob_drift_that_keeps_every_argmax_fails_naming_the_drift():
    refs, eng, cal = _sides(48, engine_sd=0.05, cal_sd=0.01)
    result = calibrate(refs, eng, cal, label="HF bfloat16 (cpu)")
    assert all(not p.diverged for p in (profile(r, e) for r, e in zip(refs, eng)))
    assert not result.passed
    assert any(line.startswith("chosen-token drift moved") for line in result.failures())
    assert any(line.startswith("top-k drift moved") for line in result.failures())


def test_diverging_far_more_often_than_the_precision_does_fails_naming_the_divergence_rate():
    refs, eng, cal = _sides(48, engine_sd=0.01, cal_sd=0.01, engine_diverge=30, cal_diverge=4)
    failures = calibrate(refs, eng, cal, label="HF bfloat16 (cpu)").failures()
    assert any(line.startswith("divergence per token moved") for line in failures)


def test_precision_the_calibration_cannot_reproduce_makes_the_tests_informational():
    refs, eng, cal = _sides(32, engine_sd=0.2, cal_sd=0.01)
    result = calibrate(refs, eng, cal, label="HF bfloat16 (cpu)", uncovered=("fp8",))
    assert result.passed and not result.gated
    assert "not gated" in "\n".join(result.render())


def test_exact_fp32_calibration_uses_floors_so_a_correct_fp32_engine_passes():
    refs = [_reference(i) for i in range(32)]
    eng = [_noisy(r, 1e-5, i) for i, r in enumerate(refs)]
    assert calibrate(refs, eng, refs, label="HF float32 (= reference)", exact=True).passed
    assert not calibrate(refs, [_noisy(r, 0.02, i) for i, r in enumerate(refs)], refs, label="x", exact=True).passed


def test_calibrated_tolerance_scales_with_the_logit_and_adds_uncovered_roundoff_in_quadrature():
    tol = ToleranceModel("bfloat16", n_layers=4, calibrated_units=0.01)
    assert tol.at(20.0) == pytest.approx(0.2) and tol.at(0.5) == pytest.approx(0.01)
    kv = ToleranceModel("fp8", n_layers=4, calibrated_units=0.01, uncovered=("fp8",))
    assert kv.at(20.0) == pytest.approx((0.2**2 + (8 * 2**-4 * 20 * 2) ** 2) ** 0.5)
    assert "calibrated" in kv.describe() and "fp8" in kv.describe()


def test_the_constant_exact_match_floor_applies_only_when_set_or_without_calibration():
    assert EquivalenceSettings().exact_match_floor is None
    assert EquivalenceSettings.from_mapping({"calibration": False}).exact_match_floor == 0.5
    assert EquivalenceSettings.from_mapping({"min_exact_match_rate": 0.3}).exact_match_floor == 0.3
    with pytest.raises(ValueError, match="calibration_margin = 0.5 must be a number >= 1"):
        EquivalenceSettings.from_mapping({"calibration_margin": 0.5})
    with pytest.raises(ValueError, match="calibration = 'yes' must be true or false"):
        EquivalenceSettings.from_mapping({"calibration": "yes"})


def test_compute_weight_and_kv_precision_are_read_separately_with_their_sources():
    target = Target(name="v", kind="vllm", dtype="float16")
    parts = precision_parts(target, VLLM_LOG.format(kv="fp8"))
    assert (parts.compute.precision, parts.weights.precision, parts.kv_cache.precision) == ("bfloat16", None, "fp8")
    assert parts.compute.source == "vllm-log" and parts.calibration_dtype() == "bfloat16"
    assert parts.uncovered() == ("fp8",)
    declared = Target(name="v", kind="vllm", options={"equivalence": {"kv_cache_precision": "bf16"}})
    parts = precision_parts(declared, VLLM_LOG.format(kv="fp8"))
    assert parts.kv_cache.precision is None and "kv_cache_precision" in parts.kv_cache.source
    flags = precision_parts(Target(name="v", kind="vllm", dtype="float32", args=("--kv-cache-dtype", "fp8")))
    assert flags.compute.precision == "float32" and flags.calibration_dtype() is None
    assert flags.kv_cache.source == "--kv-cache-dtype flag"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=60))
def test_singleton_clusters_have_design_effect_one(values):
    summary = cluster_summary(values, list(range(len(values))))
    if np.var(values) > 1e-12:
        assert summary.design_effect == pytest.approx(1.0, rel=1e-6)
        assert summary.effective_n == pytest.approx(len(values), rel=1e-6)


# distinct cluster values on a 0.01 grid: unique floats such as 0.0 and 4e-283 are "distinct" but their
# variance underflows to 0, where cluster_summary reports no clustering (deff 1) by design
@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-500, 500), min_size=2, max_size=12, unique=True).map(lambda xs: [x / 100 for x in xs]),
       st.integers(2, 8))
def test_clusters_of_identical_items_count_about_once_each(cluster_values, size):
    values = [v for v in cluster_values for _ in range(size)]
    groups = [g for g in range(len(cluster_values)) for _ in range(size)]
    summary = cluster_summary(values, groups)
    # all-or-nothing clusters: deff = (N - 1) / (G - 1), about the cluster size; n_eff about G
    g, n = len(cluster_values), len(values)
    assert summary.design_effect == pytest.approx((n - 1) / (g - 1), rel=1e-6)
    assert summary.effective_n < n
