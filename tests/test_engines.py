"""Contract tests for TensorRT-LLM engine handling (no TensorRT-LLM here, no GPU).

What is real: the engine `config.json` layouts (tests/data/engines, both the 0.9+ and the pre-0.9
layout), the trtllm-build / convert_checkpoint.py flags (checked against the flag lists read from
their parsers, tests/data/engines/cli_flags.json), the cache's locking, atomic rename and
fingerprinting. What is a stand-in: the build command itself, a small script taking trtllm-build's
flags and writing a real-format engine directory, injected through the same argv templates.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_llmserve.engines import (
    MARKER,
    EngineCache,
    EngineError,
    EngineSpec,
    Toolchain,
    checkpoint_digest,
    default_templates,
    detect_toolchain,
    expand,
    legacy_quant_mode,
    load_engine,
    mismatches,
    parse_engine_config,
    read_engine_config,
    template_values,
    verify_checkpoint_quantization,
)
from pytest_llmserve.engines.build import check_quantization_supported

DATA = Path(__file__).parent / "data" / "engines"
FLAGS = json.loads((DATA / "cli_flags.json").read_text())
TOOLCHAIN = Toolchain(trtllm_version="0.21.0", compute_capability=(9, 0))

# A stand-in for trtllm-build: same flags, writes config.json in the 0.9+ layout plus rank files.
STANDIN = textwrap.dedent('''
    import argparse, json, os, sys, time
    from pathlib import Path
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint_dir"); p.add_argument("--output_dir"); p.add_argument("--workers", type=int)
    for n in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "max_beam_width"):
        p.add_argument("--" + n, type=int)
    p.add_argument("--gemm_plugin"); p.add_argument("--context_fmha")
    a = p.parse_args()
    counter = Path(os.environ["STANDIN_COUNTER"])
    with open(counter, "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    time.sleep(float(os.environ.get("STANDIN_SLEEP", "0")))
    ckpt = json.loads((Path(a.checkpoint_dir) / "config.json").read_text())
    base = json.loads(Path(os.environ["STANDIN_BASE"]).read_text())
    out = Path(a.output_dir)
    (out / "rank0.engine").write_bytes(b"partial")
    if os.environ.get("STANDIN_FAIL"):
        print("[TRT-LLM] [E] stand-in build failure: out of memory", flush=True)
        sys.exit(3)
    pre, build = base["pretrained_config"], base["build_config"]
    pre["dtype"] = ckpt["dtype"]; pre["mapping"] = ckpt["mapping"]; pre["quantization"] = ckpt["quantization"]
    for n in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "max_beam_width"):
        if getattr(a, n) is not None:
            build[n] = getattr(a, n)
    if os.environ.get("STANDIN_LIE"):
        build["max_batch_size"] = 999
    if a.gemm_plugin:
        build["plugin_config"]["gemm_plugin"] = None if a.gemm_plugin == "disable" else a.gemm_plugin
    for r in range(ckpt["mapping"]["world_size"]):
        (out / f"rank{r}.engine").write_bytes(b"stand-in engine")
    (out / "config.json").write_text(json.dumps(base))
    print("[TRT-LLM] [I] Total time of building all engines: 00:00:00", flush=True)
''')


def _converted_checkpoint(root: Path, dtype: str = "bfloat16", tp: int = 1, quant: str | None = None) -> Path:
    """A converted TensorRT-LLM checkpoint directory (config.json with architecture + mapping)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({
        "architecture": "LlamaForCausalLM", "dtype": dtype, "vocab_size": 32000,
        "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
        "quantization": {"quant_algo": quant, "kv_cache_quant_algo": None},
    }))
    for r in range(tp):
        (root / f"rank{r}.safetensors").write_bytes(os.urandom(64))
    return root


@pytest.fixture
def standin(tmp_path, monkeypatch):
    script = tmp_path / "standin_trtllm_build.py"
    script.write_text(STANDIN)
    counter = tmp_path / "builds.txt"
    monkeypatch.setenv("STANDIN_COUNTER", str(counter))
    monkeypatch.setenv("STANDIN_BASE", str(DATA / "llama_bf16_tp1" / "config.json"))
    template = (sys.executable, str(script), "--checkpoint_dir", "{trtllm_checkpoint}", "--output_dir", "{output_dir}",
                "{*limit_args}", "{*plugin_args}", "--workers", "{world_size}")
    return template, counter


def _builds(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


# ---- config.json, both layouts -------------------------------------------------------------------

def test_current_layout_engine_config_reads_build_facts():
    cfg = read_engine_config(DATA / "llama_bf16_tp1")
    assert (cfg.architecture, cfg.dtype, cfg.tp_size, cfg.pp_size) == ("LlamaForCausalLM", "bfloat16", 1, 1)
    assert (cfg.max_batch_size, cfg.max_input_len, cfg.max_seq_len, cfg.max_num_tokens) == (8, 512, 1024, 4096)
    assert cfg.quant_algo is None and cfg.kv_cache_quant_algo is None
    assert cfg.plugins["use_paged_context_fmha"] is True and cfg.layout.startswith("pretrained_config")


def test_fp8_tp2_engine_config_reports_quantisation_and_mapping():
    cfg = read_engine_config(DATA / "llama_fp8_tp2")
    assert (cfg.quant_algo, cfg.kv_cache_quant_algo, cfg.tp_size, cfg.world_size) == ("FP8", "FP8", 2, 2)


def test_legacy_layout_engine_config_sums_input_and_output_budgets():
    cfg = read_engine_config(DATA / "legacy_llama_fp16")
    assert cfg.layout == "builder_config+plugin_config"
    assert (cfg.dtype, cfg.tp_size, cfg.max_input_len, cfg.max_seq_len) == ("float16", 1, 2048, 2048 + 512)
    assert (cfg.quant_algo, cfg.kv_cache_quant_algo) == (None, "INT8")  # quant_mode 64 = INT8_KV_CACHE
    assert cfg.plugins["gpt_attention_plugin"] == "float16"


@pytest.mark.parametrize(("bits", "expected"), [
    (0, (None, None)), (256, ("FP8", None)), (256 | 128, ("FP8", "FP8")), (2, ("W8A16", None)),
    (1, ("W4A16", None)), (64, (None, "INT8")), (2 | 4 | 8, ("LEGACY_QUANT_MODE_14", None)),
])
def test_legacy_quant_mode_bits_map_to_current_algorithm_names(bits, expected):
    assert legacy_quant_mode(bits) == expected


def test_config_without_either_layout_fails_and_names_the_layouts():
    with pytest.raises(EngineError, match="pretrained_config.*builder_config"):
        parse_engine_config({"version": "1", "something": {}})


def test_missing_config_json_fails_and_says_what_was_expected(tmp_path):
    with pytest.raises(EngineError, match="no config.json"):
        read_engine_config(tmp_path)


# ---- asked vs recorded ------------------------------------------------------------------------------

def test_engine_that_records_other_facts_is_reported_field_by_field():
    cfg = read_engine_config(DATA / "llama_bf16_tp1")
    spec = EngineSpec(quant_algo="FP8", tp=2, max_batch_size=64, dtype="bf16", plugins={"gemm_plugin": "auto"})
    problems = mismatches(spec, cfg)
    assert any(p.startswith("quant_algo: asked 'FP8'") for p in problems)
    assert any(p.startswith("tp: asked 2") for p in problems)
    assert any(p.startswith("max_batch_size: asked 64, engine records 8") for p in problems)
    assert any(p.startswith("plugins.gemm_plugin") for p in problems)  # recorded null: plugin off
    assert not any(p.startswith("dtype") for p in problems)  # bf16 == bfloat16


def test_asking_for_no_quantisation_rejects_an_fp8_engine():
    problems = mismatches(EngineSpec(tp=2), read_engine_config(DATA / "llama_fp8_tp2"))
    assert "quant_algo: asked 'none', engine records 'FP8'" in problems


def test_matching_engine_has_no_mismatches():
    spec = EngineSpec(quant_algo="FP8", kv_cache_quant_algo="fp8", tp=2, max_batch_size=64, max_seq_len=4096,
                      plugins={"gemm_plugin": "auto", "context_fmha": "enable"})
    assert mismatches(spec, read_engine_config(DATA / "llama_fp8_tp2")) == []


def test_engine_table_rejects_unknown_keys_and_lists_the_allowed_ones():
    with pytest.raises(EngineError, match=r"engine\.max_batch: unknown key; allowed: .*max_batch_size"):
        EngineSpec.from_table({"max_batch": 8})


def test_engine_table_fp8_dtype_means_fp8_quantisation_and_trt_means_tensorrt():
    spec = EngineSpec.from_table({"dtype": "fp8", "backend": "trt", "tp": 2}, model="/m")
    assert (spec.dtype, spec.quant_algo, spec.backend, spec.tp, spec.checkpoint) == (None, "FP8", "tensorrt", 2, Path("/m"))


def test_engine_table_rejects_non_integer_limits():
    with pytest.raises(EngineError, match=r"max_batch_size = '8': must be an integer >= 1"):
        EngineSpec.from_table({"max_batch_size": "8"})


# ---- build command templates vs the real CLIs --------------------------------------------------------

def test_cli_pipeline_uses_only_flags_the_real_tools_accept(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    spec = EngineSpec(checkpoint=hf, dtype="bfloat16", quant_algo="FP8", kv_cache_quant_algo="FP8", tp=2,
                      max_batch_size=16, max_input_len=512, max_seq_len=1024, max_num_tokens=2048,
                      plugins={"gemm_plugin": "auto", "use_paged_context_fmha": True},
                      convert_script=Path("/trtllm/examples/models/core/llama/convert_checkpoint.py"))
    templates = default_templates(spec)
    plan = expand(templates, template_values(spec, tmp_path / "out", tmp_path / "work"))
    convert, build = plan.commands
    assert convert[1].endswith("convert_checkpoint.py") and build[0] == "trtllm-build"
    assert {"--use_fp8", "--fp8_kv_cache", "--tp_size"} <= set(convert)
    assert set(a for a in convert[2:] if a.startswith("--")) <= set(FLAGS["convert_checkpoint.py"]["flags"])
    allowed = set(FLAGS["trtllm-build"]["flags"]) | set(FLAGS["trtllm-build"]["plugin_flags"])
    assert set(a for a in build if a.startswith("--")) <= allowed
    assert build[build.index("--checkpoint_dir") + 1] == f"{tmp_path / 'work'}/tllm_checkpoint"
    assert build[build.index("--use_paged_context_fmha") + 1] == "enable"
    assert build[build.index("--workers") + 1] == "2"


def test_converted_checkpoint_skips_conversion_and_hf_checkpoint_defaults_to_llm_api(tmp_path):
    converted = _converted_checkpoint(tmp_path / "ckpt")
    assert [t[0] for t in default_templates(EngineSpec(checkpoint=converted))] == ["trtllm-build"]
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (template,) = default_templates(EngineSpec(checkpoint=hf))
    assert "pytest_llmserve.engines.llmapi_build" in template


def test_llmapi_builder_accepts_the_arguments_its_template_passes(tmp_path):
    from pytest_llmserve.engines.llmapi_build import parse_args

    hf = tmp_path / "hf"
    hf.mkdir()
    spec = EngineSpec(checkpoint=hf, quant_algo="FP8", max_batch_size=4, max_seq_len=256)
    plan = expand(default_templates(spec), template_values(spec, tmp_path / "o", tmp_path / "w"))
    args = parse_args(list(plan.commands[0][3:]))  # after python -m module
    assert (args.model, args.quant_algo, args.max_batch_size, args.max_seq_len) == (str(hf), "FP8", 4, 256)


def test_quantisation_convert_checkpoint_cannot_do_is_refused_before_building(tmp_path):
    spec = EngineSpec(checkpoint=tmp_path, quant_algo="W4A16_AWQ", convert_script=Path("c.py"), builder="cli")
    with pytest.raises(EngineError, match="ModelOpt"):
        check_quantization_supported(spec, [("x", "{*convert_quant_args}")])


def test_template_with_unknown_placeholder_fails_and_lists_known_ones(tmp_path):
    spec = EngineSpec(checkpoint=tmp_path)
    with pytest.raises(EngineError, match=r"uses \{nope\}; known: .*output_dir"):
        expand([("tool", "--x", "{nope}")], template_values(spec, tmp_path, tmp_path))


# ---- the cache ----------------------------------------------------------------------------------------

def test_engine_is_built_once_and_reused_with_a_matching_fingerprint(tmp_path, standin):
    template, counter = standin
    spec = EngineSpec(checkpoint=_converted_checkpoint(tmp_path / "ckpt"), max_batch_size=4, max_seq_len=256,
                      plugins={"gemm_plugin": "auto"}, backend="tensorrt")
    cache = EngineCache(root=tmp_path / "cache", templates=[template])
    first = cache.get_or_build(spec, TOOLCHAIN)
    second = cache.get_or_build(spec, TOOLCHAIN)
    assert (first.built, second.built, _builds(counter)) == (True, False, 1)
    assert first.path == second.path and (first.path / MARKER).is_file() and (first.path / "build.log").is_file()
    assert first.config.max_batch_size == 4 and first.config.plugins["gemm_plugin"] == "auto"
    marker = json.loads((first.path / MARKER).read_text())
    assert marker["inputs"]["compute_capability"] == "9.0" and marker["inputs"]["trtllm_version"] == "0.21.0"


@pytest.mark.parametrize("change", ["limits", "checkpoint", "toolchain", "plugins"])
def test_any_fingerprint_input_change_builds_a_new_engine(tmp_path, standin, change):
    template, counter = standin
    ckpt = _converted_checkpoint(tmp_path / "ckpt")
    spec = EngineSpec(checkpoint=ckpt, max_batch_size=4)
    cache = EngineCache(root=tmp_path / "cache", templates=[template])
    first = cache.get_or_build(spec, TOOLCHAIN)
    toolchain = TOOLCHAIN
    if change == "limits":
        spec = replace(spec, max_batch_size=8)
    elif change == "checkpoint":
        (ckpt / "rank0.safetensors").write_bytes(os.urandom(64))
    elif change == "toolchain":
        toolchain = Toolchain(trtllm_version="0.21.0", compute_capability=(8, 9))
    else:
        spec = replace(spec, plugins={"gemm_plugin": "auto"})
    second = cache.get_or_build(spec, toolchain)
    assert second.built and second.path != first.path and _builds(counter) == 2


def test_failed_build_leaves_no_engine_and_keeps_its_log(tmp_path, standin, monkeypatch):
    template, counter = standin
    spec = EngineSpec(checkpoint=_converted_checkpoint(tmp_path / "ckpt"), max_batch_size=4)
    cache = EngineCache(root=tmp_path / "cache", templates=[template])
    monkeypatch.setenv("STANDIN_FAIL", "1")
    with pytest.raises(EngineError) as info:
        cache.get_or_build(spec, TOOLCHAIN)
    message = str(info.value)
    assert "exit status 3" in message and "out of memory" in message and "no engine was cached" in message
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert leftovers == []  # neither a finished-looking engine nor a .tmp build directory
    assert list((tmp_path / "cache").glob("failed-*.log"))
    monkeypatch.delenv("STANDIN_FAIL")
    assert cache.get_or_build(spec, TOOLCHAIN).built and _builds(counter) == 2


def test_build_whose_config_records_other_facts_is_not_cached(tmp_path, standin, monkeypatch):
    template, _ = standin
    spec = EngineSpec(checkpoint=_converted_checkpoint(tmp_path / "ckpt"), max_batch_size=4)
    cache = EngineCache(root=tmp_path / "cache", templates=[template])
    monkeypatch.setenv("STANDIN_LIE", "1")
    with pytest.raises(EngineError, match="max_batch_size: asked 4, engine records 999"):
        cache.get_or_build(spec, TOOLCHAIN)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]


def test_interrupted_builds_and_unmarked_engines_are_rebuilt(tmp_path, standin):
    template, counter = standin
    spec = EngineSpec(checkpoint=_converted_checkpoint(tmp_path / "ckpt"), max_batch_size=4)
    cache = EngineCache(root=tmp_path / "cache", templates=[template])
    built = cache.get_or_build(spec, TOOLCHAIN)
    (built.path / MARKER).unlink()  # as if the process died between rename and marker (or a manual copy)
    stale = tmp_path / "cache" / f".tmp-{built.fingerprint}-dead"
    (stale / "out").mkdir(parents=True)
    again = cache.get_or_build(spec, TOOLCHAIN)
    assert again.built and again.path == built.path and not stale.exists() and _builds(counter) == 2


def _worker(args):
    root, ckpt, template, env = args
    os.environ.update(env)
    handle = EngineCache(root=Path(root), templates=[template]).get_or_build(
        EngineSpec(checkpoint=Path(ckpt), max_batch_size=4), TOOLCHAIN)
    return str(handle.path), handle.built


def test_parallel_workers_build_an_engine_exactly_once(tmp_path, standin):
    template, counter = standin
    ckpt = _converted_checkpoint(tmp_path / "ckpt")
    env = {k: os.environ[k] for k in ("STANDIN_COUNTER", "STANDIN_BASE")} | {"STANDIN_SLEEP": "0.5"}
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_worker, [(str(tmp_path / "cache"), str(ckpt), template, env)] * 3)
    assert len({path for path, _ in results}) == 1
    assert sorted(built for _, built in results) == [False, False, True]
    assert _builds(counter) == 1


def test_prebuilt_engine_dir_is_checked_against_the_engine_table():
    assert load_engine(EngineSpec(tp=2, quant_algo="FP8", kv_cache_quant_algo="FP8", dir=DATA / "llama_fp8_tp2")).config.tp_size == 2
    with pytest.raises(EngineError, match="does not record what the target asks: max_batch_size: asked 128"):
        load_engine(EngineSpec(tp=2, quant_algo="FP8", kv_cache_quant_algo="FP8", max_batch_size=128,
                               dir=DATA / "llama_fp8_tp2"))


def test_checkpoint_digest_changes_with_content_and_is_memoised(tmp_path):
    ckpt = _converted_checkpoint(tmp_path / "ckpt")
    memo = tmp_path / "memo"
    first = checkpoint_digest(ckpt, memo_dir=memo)
    assert checkpoint_digest(ckpt, memo_dir=memo) == first == checkpoint_digest(ckpt)
    assert len(json.loads((memo / "checkpoint-hashes.json").read_text())) == 2
    shutil.copy(ckpt / "config.json", ckpt / "extra.json")
    assert checkpoint_digest(ckpt, memo_dir=memo) != first


def test_pytorch_backend_fp8_request_needs_a_checkpoint_that_declares_fp8(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(EngineError, match="asked 'FP8', checkpoint declares None"):
        verify_checkpoint_quantization(EngineSpec(checkpoint=ckpt, quant_algo="FP8"))
    (ckpt / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}}))
    verify_checkpoint_quantization(EngineSpec(checkpoint=ckpt, quant_algo="FP8", kv_cache_quant_algo="FP8"))


def test_toolchain_needs_a_trtllm_version_and_a_gpu(monkeypatch):
    from pytest_llmserve.hardware import parse_fake_inventory

    monkeypatch.setenv("LLMSERVE_TRTLLM_VERSION", "1.1.0")
    tc = detect_toolchain(lambda: parse_fake_inventory("h100-80gb-x1"))
    assert tc == Toolchain("1.1.0", (9, 0))
    with pytest.raises(EngineError, match="needs a GPU"):
        detect_toolchain(lambda: parse_fake_inventory("cpu-2c"))
    monkeypatch.delenv("LLMSERVE_TRTLLM_VERSION")
    with pytest.raises(EngineError, match="LLMSERVE_TRTLLM_VERSION"):
        detect_toolchain(lambda: parse_fake_inventory("h100-80gb-x1"))
