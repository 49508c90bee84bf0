"""Concurrency sweeps: matched work, crossovers judged against noise, JSON/Markdown/PNG outputs, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve import cli
from pytest_llmserve.report.plots import save_sweep_png
from pytest_llmserve.cli.args import parse_named
from pytest_llmserve.gates.sweep import SweepPoint, SweepResult, SweepTarget, run_sweep
from pytest_llmserve.testing import Script, TruthServer

WORK = {"requests_per_level": 64, "warmup": 0, "input_len": 8, "output_len": 8, "endpoint": "completions",
        "repeats": 1, "seed": 0}


def point(target: str, c: int, tput: float, repeat: int = 0, ttft: np.ndarray | None = None) -> SweepPoint:
    samples = {"ttft_ms": tuple(float(x) for x in ttft)} if ttft is not None else {}
    p95 = float(np.percentile(ttft, 95)) if ttft is not None else math.nan
    return SweepPoint(target, c, repeat, {"output_tok_s": tput, "ttft_p95_ms": p95}, 64, 64, {}, 1.0, True,
                      samples=samples)


def sweep(points: list[SweepPoint], levels: tuple[int, ...], repeats: int = 1) -> SweepResult:
    names = tuple(dict.fromkeys(p.target for p in points))
    return SweepResult(tuple(SweepTarget(n, f"http://{n}", "m") for n in names), levels, tuple(points),
                       {**WORK, "repeats": repeats})


def test_crossover_is_found_where_the_leader_changes_and_interpolated_in_log2():
    # a leads at c=1 and 2; b leads from c=4: the log-ratio is +ln2 at 2 and -ln2 at 4 -> they meet at c=2^1.5
    pts = [point("a", c, t) for c, t in ((1, 100), (2, 200), (4, 200))]
    pts += [point("b", c, t) for c, t in ((1, 40), (2, 100), (4, 400))]
    (x,) = sweep(pts, (1, 2, 4)).crossovers("output_tok_s")
    assert (x.leader_below, x.leader_above, x.c_low, x.c_high) == ("a", "b", 2, 4)
    assert x.at == pytest.approx(2 ** 1.5)
    assert x.significant is None and "--repeats" in x.note


def test_no_crossover_when_one_target_leads_everywhere():
    pts = [point("a", c, 100.0 * c) for c in (1, 2, 4)] + [point("b", c, 90.0 * c) for c in (1, 2, 4)]
    assert sweep(pts, (1, 2, 4)).crossovers("output_tok_s") == []


def test_repeated_runs_tell_a_real_crossover_from_noise():
    def pts(spread_below: float) -> list[SweepPoint]:
        out = []
        for r, jitter in enumerate((-1.0, 0.0, 1.0)):
            out += [point("a", 1, 100 + spread_below * jitter, r), point("b", 1, 90 + spread_below * jitter, r),
                    point("a", 8, 300 + jitter, r), point("b", 8, 400 + jitter, r)]
        return out

    (clear,) = sweep(pts(1.0), (1, 8), repeats=3).crossovers("output_tok_s")
    assert clear.significant is True and "c=1" in clear.note and "c=8" in clear.note
    (noisy,) = sweep(pts(40.0), (1, 8), repeats=3).crossovers("output_tok_s")  # the c=1 lead is within noise
    assert noisy.significant is False
    assert "within noise" in noisy.describe()


def test_latency_crossover_is_tested_with_a_bootstrap_over_requests():
    rng = np.random.default_rng(1)
    pts = [point("a", 1, 1.0, ttft=rng.lognormal(np.log(10), 0.2, 200)),
           point("b", 1, 1.0, ttft=rng.lognormal(np.log(20), 0.2, 200)),
           point("a", 16, 1.0, ttft=rng.lognormal(np.log(80), 0.2, 200)),
           point("b", 16, 1.0, ttft=rng.lognormal(np.log(40), 0.2, 200))]
    (x,) = sweep(pts, (1, 16)).crossovers("ttft_p95_ms")
    # lower is better: a has the better TTFT at c=1, b at c=16
    assert (x.leader_below, x.leader_above) == ("a", "b")
    assert x.significant is True


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.2, 5.0), min_size=2, max_size=7))
def test_crossovers_match_sign_changes_and_lie_between_their_levels(ratios):
    levels = tuple(2 ** i for i in range(len(ratios)))
    pts = [point("a", c, 100.0 * r) for c, r in zip(levels, ratios)] + [point("b", c, 100.0) for c in levels]
    found = sweep(pts, levels).crossovers("output_tok_s")
    signs = [np.sign(math.log(100.0 * r / 100.0)) for r in ratios]
    changes = sum(1 for s0, s1 in zip(signs, signs[1:]) if s0 and s1 and s0 != s1)
    assert len(found) == changes
    for x in found:
        assert x.c_low <= x.at <= x.c_high
        assert {x.leader_below, x.leader_above} == {"a", "b"}


def test_json_round_trip_renders_the_same_markdown(tmp_path):
    pts = [point("a", c, 100.0 * c, ttft=np.arange(1.0, 30.0)) for c in (1, 2)] + [
        point("b", c, 150.0 * c, ttft=np.arange(2.0, 31.0)) for c in (1, 2)]
    result = sweep(pts, (1, 2))
    again = SweepResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.markdown() == result.markdown()
    assert again.points[0].samples["ttft_ms"][:3] == (1.0, 2.0, 3.0)


def test_markdown_has_one_row_per_target_and_level_and_flags_short_levels():
    pts = [point("a", c, 10.0 * c) for c in (1, 32)]
    md = sweep(pts, (1, 32)).markdown()
    rows = [line for line in md.splitlines() if line.startswith("| 1 |") or line.startswith("| 32 |")]
    assert len(rows) == 2 and "| 320.0 |" in rows[1]
    assert "at c=32 fewer than 4×c requests" in md


def test_png_has_three_panels_and_is_written(tmp_path):
    pts = [point("a", c, 100.0 * c, ttft=np.arange(1.0, 30.0)) for c in (1, 2, 4)]
    path = save_sweep_png(sweep(pts, (1, 2, 4)), tmp_path / "s.png")
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[1] > 2 * img.shape[0]  # three panels side by side


def test_sweep_runs_matched_work_in_rotating_order_against_a_streaming_server():
    calls = []
    with TruthServer(Script(ttft_ms=2, itl_ms=5)) as server:
        from pytest_llmserve.load import run_load

        def runner(url, model, spec):
            calls.append((url, spec.concurrency, spec.seed, spec.output_len))
            return run_load(url, model, spec)

        targets = [SweepTarget("one", server.url, "truth-model"), SweepTarget("two", server.url + "/v1", "truth-model")]
        result = run_sweep(targets, [2, 1], requests_per_level=6, input_len=4, output_len=3, warmup=0, repeats=2,
                           runner=runner)
    assert result.concurrencies == (1, 2)
    # every (level, repeat) gives both targets the same spec; who goes first alternates
    assert [(c, s) for _, c, s, _ in calls] == [(1, 0), (1, 0), (1, 1), (1, 1), (2, 0), (2, 0), (2, 1), (2, 1)]
    firsts = [calls[i][0] for i in range(0, 8, 2)]
    assert firsts == [server.url, server.url + "/v1", server.url + "/v1", server.url]
    for p in result.points:
        assert p.completed == 6 and len(p.samples["ttft_ms"]) == 6 and len(p.samples["tpot_ms"]) == 6


def test_cli_writes_json_markdown_and_png_and_exits_0(tmp_path, capsys):
    with TruthServer(Script(ttft_ms=5, itl_ms=20)) as server:
        code = cli.main(["sweep", "--url", f"truth={server.url}", "--concurrency", "1,2", "--requests-per-level", "4",
                         "--input-len", "4", "--output-len", "3", "--warmup", "0", "--out", str(tmp_path), "--quiet",
                         "--no-server-metrics"])
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert [p["concurrency"] for p in data["points"]] == [1, 2]
    assert data["points"][0]["metrics"]["output_tok_s"] > 0
    assert "| 2 | truth" in (tmp_path / "sweep.md").read_text()
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert code == (0 if all(p["valid"] for p in data["points"]) else 1)


def test_cli_drives_chat_without_ignore_eos_for_servers_that_reject_it(tmp_path):
    # transformers serve answers 422 to ignore_eos/min_tokens and needs text prompts: --endpoint chat --no-ignore-eos
    with TruthServer(Script(ttft_ms=2, itl_ms=5)) as server:
        code = cli.main(["sweep", "--url", f"hf={server.url}", "--model", "truth-model", "--concurrency", "1,2",
                         "--requests-per-level", "4", "--output-len", "3", "--warmup", "0", "--endpoint", "chat",
                         "--no-ignore-eos", "--out", str(tmp_path), "--quiet", "--no-server-metrics"])
        paths = {r["path"] for r in server.truth() if r["max_tokens"] == 3}  # not the start-up probe's requests
    assert code == 0
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert paths == {"/v1/chat/completions"}
    assert data["work"]["endpoint"] == "chat" and data["work"]["ignore_eos"] is False
    assert "EOS not ignored" in (tmp_path / "sweep.md").read_text()
    # each request's median gap (its decode-step time) is kept for the timing-based CUDA-graph check
    assert all(len(p["samples"]["step_ms"]) == 4 for p in data["points"])


def test_sweep_passes_ignore_eos_false_to_every_run():
    seen = []
    with TruthServer(Script(ttft_ms=1, itl_ms=2)) as server:
        from pytest_llmserve.load import run_load

        def runner(url, model, spec):
            seen.append((spec.ignore_eos, spec.endpoint))
            return run_load(url, model, spec)

        result = run_sweep([SweepTarget("t", server.url, "m")], [1, 2], requests_per_level=2, output_len=2, warmup=0,
                           endpoint="chat", ignore_eos=False, runner=runner)
    assert seen == [(False, "chat"), (False, "chat")]
    assert result.work["ignore_eos"] is False


@pytest.mark.parametrize("args, message", [
    (["--url", "a=http://127.0.0.1:9", "--concurrency", "1,x"], "give integers separated by commas"),
    (["--url", "a=http://127.0.0.1:9", "--concurrency", "0"], "must be >= 1"),
    (["--concurrency", "1"], "required: --url"),
])
def test_cli_usage_errors_exit_3_and_say_what_to_pass(args, message, capsys):
    assert cli.main(["sweep", "--model", "m", *args]) == 3
    assert message in capsys.readouterr().err


def test_unreachable_server_exits_3_and_names_the_url(capsys):
    assert cli.main(["sweep", "--url", "a=http://127.0.0.1:9", "--concurrency", "1"]) == 3
    assert "http://127.0.0.1:9/v1/models" in capsys.readouterr().err


def test_named_values_accept_bare_values_for_every_target():
    assert parse_named(["x=http://h:1", "http://h:2"], "--url") == {"x": "http://h:1", "": "http://h:2"}
