"""The equivalence rule: exact prefix, near-tie by top-k membership and log-odds swing, else hard mismatch."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pytest_llmserve.checks.equivalence import Continuation, compare_all, compare_continuation
from pytest_llmserve.checks.near_tie import (DEFAULT_TOLERANCE_SCALE, UNIT_ROUNDOFF, EquivalenceSettings, ToleranceModel, normalize_precision,
                                             precision_of)
from pytest_llmserve.settings.config import Target

VOCAB = 12
TOL = ToleranceModel("bfloat16", n_layers=4)


@st.composite
def continuations(draw, min_len=1, max_len=12):
    """A reference-like continuation: per step a top-k dict whose argmax is the chosen token."""
    n = draw(st.integers(min_len, max_len))
    tokens, tops, scales = [], [], []
    for _ in range(n):
        k = draw(st.integers(2, 5))
        ids = draw(st.lists(st.integers(0, VOCAB - 1), min_size=k, max_size=k, unique=True))
        lps = sorted(draw(st.lists(st.floats(-12, -0.001), min_size=k, max_size=k)), reverse=True)
        top = dict(zip(ids, lps))
        tokens.append(ids[0])
        tops.append(top)
        scales.append(draw(st.floats(0, 40)))
    return Continuation(tuple(tokens), tuple(tops), tuple(scales))


def _with_step(cont: Continuation, i: int, token: int, top: dict[int, float]) -> Continuation:
    tokens = list(cont.tokens)
    tops = list(cont.top_logprobs)
    tokens[i], tops[i] = token, top
    return Continuation(tuple(tokens), tuple(tops), cont.logit_scale)


def _tie(ref_gap: float, cand_gap: float, scale: float = 10.0) -> tuple[Continuation, Continuation]:
    """One-step continuations that diverge: reference picks 5 over 7 by ref_gap, candidate 7 over 5 by cand_gap."""
    ref = Continuation((5,), ({5: -0.5, 7: -0.5 - ref_gap, 9: -4.0},), (scale,))
    cand = Continuation((7,), ({7: -0.5, 5: -0.5 - cand_gap, 9: -4.0},))
    return ref, cand


@given(continuations())
def test_identical_continuations_are_exact_at_any_tolerance(ref):
    for tol in (ToleranceModel("float32"), TOL, ToleranceModel(fixed_nats=0.0)):
        result = compare_continuation("p", [0, 1], ref, ref, tol)
        assert result.verdict == "exact" and result.matched == len(ref.tokens) and result.divergence is None


@given(continuations(min_len=2), st.data())
def test_matched_prefix_is_the_first_differing_position(ref, data):
    p = data.draw(st.integers(0, len(ref.tokens) - 1))
    other = data.draw(st.integers(0, VOCAB - 1).filter(lambda t: t != ref.tokens[p]))
    cand = _with_step(ref, p, other, {other: -0.1, ref.tokens[p]: -0.2})
    result = compare_continuation("p", [0], ref, cand, TOL)
    assert result.matched == p
    assert result.verdict in ("near_tie", "mismatch")
    assert result.divergence is not None and result.divergence.position == p


@given(continuations(min_len=3), st.data())
def test_tokens_after_the_first_divergence_never_change_the_verdict(ref, data):
    p = data.draw(st.integers(0, len(ref.tokens) - 2))
    other = data.draw(st.integers(0, VOCAB - 1).filter(lambda t: t != ref.tokens[p]))
    cand = _with_step(ref, p, other, {other: -0.1, ref.tokens[p]: -0.15})
    tail_token = data.draw(st.integers(0, VOCAB - 1))
    scrambled = _with_step(cand, len(ref.tokens) - 1, tail_token, {tail_token: -3.0})
    a = compare_continuation("p", [0], ref, cand, TOL)
    b = compare_continuation("p", [0], ref, scrambled, TOL)
    assert (a.verdict, a.matched, a.reason) == (b.verdict, b.matched, b.reason)


@given(continuations(), st.data())
def test_candidate_token_outside_reference_top_k_is_a_hard_mismatch_at_any_tolerance(ref, data):
    p = data.draw(st.integers(0, len(ref.tokens) - 1))
    outside = [t for t in range(VOCAB) if t not in ref.top_logprobs[p]]
    assume(outside)
    other = data.draw(st.sampled_from(outside))
    cand = _with_step(ref, p, other, {other: -0.01, ref.tokens[p]: -0.02})
    result = compare_continuation("p", [0], ref, cand, ToleranceModel(fixed_nats=1e9))
    assert result.verdict == "mismatch" and "reference top-k" in result.reason


def test_reference_token_outside_candidate_top_k_is_a_hard_mismatch():
    ref, _ = _tie(0.001, 0.001)
    cand = Continuation((7,), ({7: -0.5, 9: -0.6},))
    result = compare_continuation("p", [0], ref, cand, ToleranceModel(fixed_nats=100.0))
    assert result.verdict == "mismatch" and "candidate top-k" in result.reason


@given(st.floats(0, 3), st.floats(0, 3), st.floats(0, 2))
def test_near_tie_is_accepted_exactly_when_the_swing_fits_the_tolerance(ref_gap, cand_gap, tol):
    ref, cand = _tie(ref_gap, cand_gap)
    result = compare_continuation("p", [0], ref, cand, ToleranceModel(fixed_nats=tol))
    swing = result.divergence.swing
    assert math.isclose(swing, ref_gap + cand_gap, abs_tol=1e-9)
    assert result.verdict == ("near_tie" if swing <= tol else "mismatch")


@given(st.floats(0, 3), st.floats(0, 3), st.floats(0, 2), st.floats(0, 2))
def test_a_larger_tolerance_never_turns_a_near_tie_into_a_mismatch(ref_gap, cand_gap, t1, t2):
    ref, cand = _tie(ref_gap, cand_gap)
    lo, hi = sorted((t1, t2))
    v_lo = compare_continuation("p", [0], ref, cand, ToleranceModel(fixed_nats=lo)).verdict
    v_hi = compare_continuation("p", [0], ref, cand, ToleranceModel(fixed_nats=hi)).verdict
    assert not (v_lo == "near_tie" and v_hi == "mismatch")


def test_confident_candidate_at_a_reference_tie_fails_where_vllms_rule_passes():
    # Reference: a 0.01-nat tie. Candidate: picks the other token by 2 nats. vLLM's rank-only rule
    # passes this (each token is in the other's top-k); the log-odds swing of 2.01 nats does not.
    ref, cand = _tie(0.01, 2.0)
    result = compare_continuation("p", [0], ref, cand, TOL)
    assert result.divergence.reference_gap == pytest.approx(0.01)
    assert result.verdict == "mismatch" and "swing" in result.reason


def test_measured_bf16_flips_are_near_ties_under_the_default_tolerance():
    # REFERENCE.md section 5: bf16 vs fp32 flips at reference top-2 gaps 0.008-0.129 nats, with
    # logits around 8-12 on the 4-layer tiny model; the candidate's own gap is at most one bf16 ULP.
    for ref_gap in (0.008, 0.012, 0.025, 0.129):
        ref, cand = _tie(ref_gap, 0.0625, scale=10.0)
        assert compare_continuation("p", [0], ref, cand, TOL).verdict == "near_tie", ref_gap


def test_short_candidate_is_a_hard_mismatch_that_names_both_lengths():
    ref = Continuation((1, 2, 3), ({1: -0.1}, {2: -0.1}, {3: -0.1}))
    cand = Continuation((1, 2), ({1: -0.1}, {2: -0.1}))
    result = compare_continuation("p", [0], ref, cand, TOL)
    assert result.verdict == "mismatch" and result.matched == 2 and "2 tokens" in result.reason and "3" in result.reason


@given(st.floats(0, 100), st.floats(0, 100))
def test_tolerance_grows_with_logit_magnitude(a, b):
    lo, hi = sorted((a, b))
    assert TOL.at(lo) <= TOL.at(hi)


def test_tolerance_grows_with_coarser_precision_and_depth():
    ordered = sorted(UNIT_ROUNDOFF, key=UNIT_ROUNDOFF.get)
    values = [ToleranceModel(p, 4).at(10.0) for p in ordered]
    assert values == sorted(values) and len(set(values)) == len(set(UNIT_ROUNDOFF.values()))
    assert ToleranceModel("bfloat16", 32).at(10.0) > ToleranceModel("bfloat16", 4).at(10.0)
    assert ToleranceModel("bfloat16", 4, fixed_nats=0.3).at(1000.0) == 0.3


def test_bf16_tolerance_on_the_tiny_model_is_the_documented_formula():
    assert DEFAULT_TOLERANCE_SCALE == 8.0
    assert TOL.at(10.0) == pytest.approx(8.0 * 2**-8 * 10.0 * 2.0)
    assert TOL.at(0.2) == TOL.at(1.0)  # magnitudes below 1 do not shrink it


@given(st.lists(st.sampled_from(["exact", "tie", "bad"]), min_size=1, max_size=20), st.floats(0, 1))
def test_report_counts_and_gate_agree_with_the_per_prompt_verdicts(kinds, floor):
    refs, cands, prompts = [], [], []
    for i, kind in enumerate(kinds):
        ref, cand = _tie(0.001, 0.001) if kind == "tie" else _tie(0.001, 5.0)
        refs.append(ref)
        cands.append(ref if kind == "exact" else cand)
        prompts.append((f"p{i}", [0]))
    report = compare_all("t", prompts, refs, cands, TOL, top_k=5, max_tokens=1, min_exact_match_rate=floor)
    assert (report.exact, report.near_ties, report.hard_mismatches) == tuple(kinds.count(k) for k in ("exact", "tie", "bad"))
    assert report.exact_match_rate == pytest.approx(kinds.count("exact") / len(kinds))
    assert report.passed == ("bad" not in kinds and report.exact_match_rate >= floor)
    assert bool(report.failures()) != report.passed
    json.dumps(report.to_dict())


def test_render_points_at_the_first_hard_mismatch_with_decoded_context():
    ref = Continuation((10, 11, 12), ({10: -0.1}, {11: -0.1, 20: -3.0}, {12: -0.1}), (9.0, 9.0, 9.0))
    cand = Continuation((10, 20, 21), ({10: -0.1}, {20: -0.05, 11: -4.0}, {21: -0.1}))
    report = compare_all("tiny", [("p07", [1, 2, 3])], [ref], [cand], TOL, top_k=5, max_tokens=3,
                         min_exact_match_rate=0.0)
    text = report.render(lambda ids: "".join(chr(ord("a") + t % 26) for t in ids))
    assert not report.passed and "FAIL" in text
    assert "First hard mismatch: prompt p07, generated token 1" in text
    assert "'l' -> 'u'" in text  # reference token 11 -> candidate token 20
    assert "context  : ...'bcdk'" in text  # prompt tail + matched prefix
    assert "#20" in report.render()  # without a decoder, token ids


def test_exact_match_rate_below_the_floor_fails_even_without_mismatches():
    ref, cand = _tie(0.001, 0.001)
    report = compare_all("t", [("a", [0]), ("b", [0])], [ref, ref], [cand, ref], TOL, top_k=5, max_tokens=1,
                         min_exact_match_rate=0.75)
    assert report.hard_mismatches == 0 and not report.passed
    assert "exact-match rate 50.0% < floor 75.0%" in report.render()


def test_settings_reject_unknown_keys_and_bad_values_naming_them():
    with pytest.raises(ValueError, match="unknown key.*tolerance\\b"):
        EquivalenceSettings.from_mapping({"tolerance": 0.1})
    with pytest.raises(ValueError, match="top_k = 0"):
        EquivalenceSettings.from_mapping({"top_k": 0})
    with pytest.raises(ValueError, match="min_exact_match_rate = 1.5"):
        EquivalenceSettings.from_mapping({"min_exact_match_rate": 1.5})
    target = Target(name="t", kind="vllm", options={"equivalence": {"precision": "fp7"}})
    with pytest.raises(ValueError, match="target 't' options.equivalence: unknown precision 'fp7'"):
        EquivalenceSettings.from_target(target)
    s = EquivalenceSettings.from_target(Target(name="t", kind="vllm", options={"equivalence": {
        "tolerance_nats": 0.2, "top_k": 8, "min_exact_match_rate": 0.9, "precision": "bf16"}}))
    assert (s.tolerance_nats, s.top_k, s.min_exact_match_rate, s.precision) == (0.2, 8, 0.9, "bfloat16")


@pytest.mark.parametrize(("name", "canonical"), [("bf16", "bfloat16"), ("FP16", "float16"), ("half", "float16"),
                                                 ("float32", "float32"), ("fp8-e4m3", "fp8"), ("NVFP4", "fp4")])
def test_precision_names_normalize(name, canonical):
    assert normalize_precision(name) == canonical


def _engine(tmp_path, pretrained: dict, **extra) -> Target:
    (tmp_path / "config.json").write_text(json.dumps({"pretrained_config": pretrained, "build_config": {}}))
    return Target(name="trt", kind="trtllm-serve", model=str(tmp_path), dtype="float16", **extra)


def test_precision_follows_the_trtllm_engine_record_not_the_target_dtype(tmp_path):
    assert precision_of(_engine(tmp_path, {"dtype": "bfloat16"})) == "bfloat16"
    assert precision_of(_engine(tmp_path, {"dtype": "float16", "quantization": {"quant_algo": "FP8"}})) == "fp8"
    assert precision_of(_engine(tmp_path, {"dtype": "float16", "quantization": {
        "quant_algo": None, "kv_cache_quant_algo": "INT8"}})) == "int8"
    assert precision_of(_engine(tmp_path, {"dtype": "bfloat16", "quantization": {"quant_algo": "W4A16_AWQ"}})) == "int4"


def test_precision_reads_an_engine_dir_named_in_the_target(tmp_path):
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps({"pretrained_config": {"dtype": "float16"}}))
    target = Target(name="trt", kind="trtllm-serve", model=str(tmp_path), engine={"dir": str(engine)})
    assert precision_of(target) == "float16"


def test_precision_for_vllm_targets_comes_from_dtype_and_quantization_flags():
    assert precision_of(Target(name="v", kind="vllm", dtype="float16")) == "float16"
    assert precision_of(Target(name="v", kind="vllm")) == "bfloat16"
    assert precision_of(Target(name="v", kind="vllm", dtype="bfloat16", args=("--kv-cache-dtype", "fp8"))) == "fp8"
    assert precision_of(Target(name="v", kind="vllm", dtype="bfloat16", args=("--quantization=awq",))) == "int4"
    assert precision_of(Target(name="v", kind="vllm", dtype="bfloat16",
                               options={"equivalence": {"precision": "fp16"}})) == "float16"


def test_precision_prefers_what_the_vllm_log_says_over_the_declared_dtype():
    log = ("INFO Initializing a V1 LLM engine (v0.32.0) with config: model='m', dtype=torch.bfloat16, "
           "quantization=None, enforce_eager=False, kv_cache_dtype=fp8_e5m2, device_config=cpu\n")
    target = Target(name="v", kind="vllm", dtype="float16")
    assert precision_of(target) == "float16"
    assert precision_of(target, log) == "fp8_e5m2"
