#!/usr/bin/env python3
"""Regenerate the synthetic GPU transcripts in this folder (the CPU vLLM log is real; these are not).

No GPU, TensorRT-LLM or Triton runs on the development machines, so the GPU-side transcripts are
built here, deterministically, from the servers' own format strings:

* vLLM 0.32.0 (the installed wheel's source): the config dump is the REAL dump line of
  `vllm_cpu_0.32.0.log` with the GPU values substituted; the other lines follow
  `v1/engine/core.py` ("Initializing a V1 LLM engine (v%s) with config: %s"),
  `v1/worker/gpu_model_runner.py` (tqdm desc "Capturing CUDA graphs ({}, {})" and
  "Graph capturing finished in %.0f secs, took %.2f GiB"), `config/vllm.py` (enforce-eager
  warning), `config/compilation.py` (spec-decode downgrade warning),
  `compilation/cuda_graph.py` (CUDAGraphLogging table), `v1/core/kv_cache_utils.py`.
* TensorRT-LLM `tensorrt_llm/_torch/pyexecutor/model_engine.py` ("Creating CUDA graph instances
  for {n} batch sizes.", "Run generation only / generation-only CUDA graph warmup for batch
  size={bs}, ..."), laid out like a public trtllm-serve 1.1.0rc3 startup log (warmup runs twice).
* tensorrtllm_backend `inflight_batcher_llm/src/model_instance_state.cc` warnings and the
  `all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt` template (parameters block).

Run from the repository root: `.venv/bin/python tests/data/logs/make_transcripts.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
CPU_LOG = HERE / "vllm_cpu_0.32.0.log"

SIZES = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, 513, 16))  # vLLM default, max_num_seqs=256
ATTN_OPS = "['vllm::unified_attention', 'vllm::unified_attention_with_output', 'vllm::unified_mla_attention', 'vllm::unified_mla_attention_with_output', 'vllm::mamba_mixer2', 'vllm::mamba_mixer', 'vllm::short_conv', 'vllm::linear_attention', 'vllm::plamo2_mamba_mixer', 'vllm::gdn_attention_core', 'vllm::kda_attention', 'vllm::sparse_attn_indexer']"


def header(kind: str, sources: str) -> str:
    return (
        f"# SYNTHETIC {kind} transcript, built from format strings at {sources}.\n"
        "# Not captured from a GPU run; regenerate with tests/data/logs/make_transcripts.py.\n"
    )


def cpu_dump() -> str:
    for line in CPU_LOG.read_text().splitlines():
        if "Initializing a V1 LLM engine" in line:
            return line.split("Initializing a V1 LLM engine", 1)[1]
    raise SystemExit("the real CPU log has no config dump")


def gpu_dump(mode: str, mode_value: str, *, eager: bool = False, metrics: bool = False) -> str:
    d = cpu_dump().replace("/tmp/graphs_helper/tiny-rand-llama", "/models/llama-3.1-8b-instruct")
    subs = {
        "device_config=cpu": "device_config=cuda",
        "max_seq_len=512": "max_seq_len=8192",
        "disable_custom_all_reduce=True": "disable_custom_all_reduce=False",
        "enforce_eager=False": f"enforce_eager={eager}",
        "cudagraph_metrics=False": f"cudagraph_metrics={metrics}",
        "'cudagraph_mode': <CUDAGraphMode.NONE: 0>": f"'cudagraph_mode': <CUDAGraphMode.{mode}: {mode_value}>",
    }
    if not eager:
        subs |= {
            "'mode': <CompilationMode.DYNAMO_TRACE_ONCE: 2>": "'mode': <CompilationMode.VLLM_COMPILE: 3>",
            "'splitting_ops': []": f"'splitting_ops': {ATTN_OPS}",
            "'cudagraph_num_of_warmups': 0": "'cudagraph_num_of_warmups': 1",
            "'cudagraph_capture_sizes': []": f"'cudagraph_capture_sizes': {SIZES}",
            "'max_cudagraph_capture_size': None": "'max_cudagraph_capture_size': 512",
        }
    else:
        subs["'mode': <CompilationMode.DYNAMO_TRACE_ONCE: 2>"] = "'mode': <CompilationMode.NONE: 0>"
    for old, new in subs.items():
        assert old in d, old
        d = d.replace(old, new)
    return "Initializing a V1 LLM engine" + d


def vllm_log(body: list[str], dump: str, *, warnings_before: list[str] = ()) -> str:
    api, core = "(APIServer pid=2211)", "(EngineCore pid=2390)"
    lines = [
        f"{api} INFO 11-25 09:14:02 [api_utils.py:286] non-default args: {{'model': '/models/llama-3.1-8b-instruct', 'max_model_len': 8192}}",
        f"{api} INFO 11-25 09:14:09 [model.py:733] Resolved architecture: LlamaForCausalLM",
        f"{api} INFO 11-25 09:14:09 [model.py:2152] Using max model len 8192",
        *warnings_before,
        f"{core} INFO 11-25 09:14:16 [core.py:133] {dump}",
        f"{core} INFO 11-25 09:14:19 [gpu_model_runner.py:5150] Model loading took 14.99 GiB memory and 4.812345 seconds",
        f"{core} INFO 11-25 09:14:31 [gpu_worker.py:760] Available KV cache memory: 55.64 GiB",
        f"{core} INFO 11-25 09:14:31 [kv_cache_utils.py:2327] GPU KV cache size: 455,808 tokens, Maximum concurrency for 8,192 tokens per request: 55.64x",
        *body,
        f"{core} INFO 11-25 09:14:45 [core.py:402] init engine (profile, create kv cache, warmup model) took 26.12 s",
        f"{api} INFO 11-25 09:14:46 [entry.py:140] Starting vLLM server on http://0.0.0.0:8000",
        "INFO:     Started server process [2211]",
        "INFO:     Waiting for application startup.",
        "INFO:     Application startup complete.",
    ]
    return "\n".join(lines) + "\n"


def bar(kind: str, mode: str, n: int, secs: int, rate: float) -> str:
    """One tqdm bar as it lands in a log file: \\r-separated redraws on one line."""
    first = f"Capturing CUDA graphs ({kind}, {mode}):   0%|          | 0/{n} [00:00<?, ?it/s]"
    mid = f"Capturing CUDA graphs ({kind}, {mode}):  49%|████▉     | {n // 2}/{n} [00:0{secs // 2}<00:0{secs // 2}, {rate:.2f}it/s]"
    last = f"Capturing CUDA graphs ({kind}, {mode}): 100%|██████████| {n}/{n} [00:0{secs}<00:00, {rate:.2f}it/s]"
    return "\r".join([first, mid, last])


def write_vllm() -> None:
    core = "(EngineCore pid=2390)"
    src = "vllm 0.32.0 v1/engine/core.py, v1/worker/gpu_model_runner.py, config/compilation.py, compilation/cuda_graph.py (real CPU dump line with GPU values)"
    n_decode = sum(1 for s in SIZES if s <= 256)
    finished = (
        f"{core} INFO 11-25 09:14:44 [gpu_model_runner.py:6582] Graph capturing finished in 9 secs, took 0.54 GiB"
    )
    table = [
        f"{core} INFO 11-25 09:16:02 [loggers.py:344] **CUDAGraph Config Settings:**",
        f"{core} INFO 11-25 09:16:02 [loggers.py:344] ",
        f"{core} INFO 11-25 09:16:02 [loggers.py:344] - Mode: FULL_AND_PIECEWISE",
        f"{core} INFO 11-25 09:16:02 [loggers.py:344] - Capture sizes: {SIZES}",
        f"{core} INFO 11-25 09:16:02 [loggers.py:344] ",
        f"{core} INFO 11-25 09:16:02 [loggers.py:344] **CUDAGraph Stats:**",
        f"{core} INFO 11-25 09:16:02 [loggers.py:344] ",
        f"{core} INFO 11-25 09:16:02 [loggers.py:344] | Unpadded Tokens | Padded Tokens | Num Paddings | Runtime Mode | Count |",
        f"{core} INFO 11-25 09:16:02 [loggers.py:344] |-----------------|---------------|--------------|--------------|-------|",
        f"{core} INFO 11-25 09:16:02 [loggers.py:344] | 64              | 64            | 0            | FULL         | 1840  |",
        f"{core} INFO 11-25 09:16:02 [loggers.py:344] | 61              | 64            | 3            | FULL         | 95    |",
        f"{core} INFO 11-25 09:16:02 [loggers.py:344] | 1087            | 1088          | 1            | PIECEWISE    | 12    |",
        f"{core} INFO 11-25 09:16:02 [loggers.py:344] | 8300            | 8300          | 0            | NONE         | 2     |",
        "(APIServer pid=2211) INFO 11-25 09:16:02 [loggers.py:259] Engine 000: Avg prompt throughput: 10240.3 tokens/s, Avg generation throughput: 5832.1 tokens/s, Running: 64 reqs, Waiting: 0 reqs, GPU KV cache usage: 12.4%, Prefix cache hit rate: 0.0%",
    ]
    on = (
        vllm_log(
            [
                bar("mixed prefill-decode", "PIECEWISE", len(SIZES), 5, 10.21),
                bar("decode", "FULL", n_decode, 3, 11.67),
                finished,
            ],
            gpu_dump("FULL_AND_PIECEWISE", "(2, 1)", metrics=True),
        )
        + "\r\n".join(table)
        + "\n"
    )
    (HERE / "vllm_gpu_on.log").write_text(header("vLLM GPU (FULL_AND_PIECEWISE, --cudagraph-metrics)", src) + on)
    piecewise = vllm_log(
        [
            bar("mixed prefill-decode", "PIECEWISE", len(SIZES), 5, 10.21),
            finished.replace("9 secs, took 0.54", "5 secs, took 0.31"),
        ],
        gpu_dump("PIECEWISE", "1"),
    )
    (HERE / "vllm_gpu_piecewise.log").write_text(header("vLLM GPU (-cc.cudagraph_mode=PIECEWISE)", src) + piecewise)
    warn = (
        f"{core} WARNING 11-25 09:14:32 [compilation.py:1459] CUDAGraphMode.FULL_AND_PIECEWISE is not supported "
        "with spec-decode for attention backend FlashInferBackend (support: "
        "AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE); setting cudagraph_mode=PIECEWISE"
    )
    down = vllm_log(
        [
            warn,
            bar("mixed prefill-decode", "PIECEWISE", len(SIZES), 5, 10.21),
            finished.replace("9 secs, took 0.54", "6 secs, took 0.33"),
        ],
        gpu_dump("FULL_AND_PIECEWISE", "(2, 1)"),
    )
    (HERE / "vllm_gpu_downgraded.log").write_text(
        header("vLLM GPU (FULL_AND_PIECEWISE silently downgraded)", src) + down
    )
    eager_warn = (
        "(APIServer pid=2211) WARNING 11-25 09:14:09 [vllm.py:1703] Enforce eager set, disabling torch.compile, "
        "CUDAGraphs, and JIT kernel warmup. This is equivalent to setting -cc.mode=none -cc.cudagraph_mode=none "
        "and --kernel_config.enable_jit_warmup=False"
    )
    eager = vllm_log([], gpu_dump("NONE", "0", eager=True), warnings_before=[eager_warn])
    (HERE / "vllm_gpu_eager.log").write_text(header("vLLM GPU (--enforce-eager)", src) + eager)


def trt_line(t: str, level: str, msg: str) -> str:
    return f"[11/25/2026-{t}] [TRT-LLM] [{level}] {msg}"


def trtllm_log(
    *,
    use_graph: bool,
    sizes: list[int],
    max_bs: int,
    newest: bool,
    padding: bool = False,
    pycfg: bool = True,
    chunked: bool = False,
    reuse: bool = True,
    kv_dtype: str = "auto",
) -> str:
    out = [
        "[TensorRT-LLM] TensorRT-LLM version: 1.1.0",
        trt_line("09:20:04", "I", "Using LLM with PyTorch backend"),
        trt_line("09:20:04", "I", "Set nccl_plugin to None."),
    ]
    if pycfg:
        out.append(
            trt_line(
                "09:20:19",
                "I",
                f"PyTorchConfig(extra_resource_managers={{}}, use_cuda_graph={use_graph}, cuda_graph_batch_sizes={sizes if use_graph else None}, "
                f"cuda_graph_max_batch_size={max(sizes) if use_graph else 0}, cuda_graph_padding_enabled={padding}, "
                f"disable_overlap_scheduler=False, attn_backend='TRTLLM', moe_backend='CUTLASS', kv_cache_dtype='{kv_dtype}', print_iter_log=False, "
                "torch_compile_enabled=False, enable_autotuner=True)",
            )
        )
    out += [
        trt_line(
            "09:20:19",
            "I",
            f"ATTENTION RUNTIME FEATURES:  AttentionRuntimeFeatures(chunked_prefill={chunked}, cache_reuse={reuse}, has_speculative_draft_tokens=False, chunk_size=8192)",
        ),
        trt_line("09:20:19", "I", f'Validating KV Cache config against kv_cache_dtype="{kv_dtype}"'),
        trt_line("09:20:21", "I", "Use 8.47 GB for model weights."),
    ]
    for rnd, (tokens, gib) in enumerate([(8224, "0.56"), (981504, "60.12")]):
        t = ["09:21:10", "09:21:51"][rnd]
        out += [
            "[TensorRT-LLM][INFO] Number of tokens per block: 32.",
            f"[TensorRT-LLM][INFO] [MemUsageChange] Allocated {gib} GiB for max tokens in paged KV cache ({tokens}).",
            trt_line(
                t, "I", f"max_seq_len=8192, max_num_requests={max_bs}, max_num_tokens=8192, max_batch_size={max_bs}"
            ),
            trt_line(t, "I", "[Autotuner] Autotuning process starts ..."),
            trt_line(t, "I", "[Autotuner] Cache size after warmup is 28"),
            trt_line(t, "I", "[Autotuner] Autotuning process ends"),
        ]
        if use_graph:
            warmed = [s for s in sorted(sizes, reverse=True) if s <= max_bs]
            out.append(trt_line(t, "I", f"Creating CUDA graph instances for {len(warmed)} batch sizes."))
            for s in warmed:
                msg = (
                    f"Run generation-only CUDA graph warmup for batch size={s}, draft_len=0, max_seq_len=8192"
                    if newest
                    else f"Run generation only CUDA graph warmup for batch size={s}, draft_len=0"
                )
                out.append(trt_line(t, "I", msg))
    out += [
        trt_line("09:21:57", "I", "Setting PyTorch memory fraction to 0.5983721838660735 (47.12 GiB)"),
        "INFO:     Started server process [41]",
        "INFO:     Waiting for application startup.",
        "INFO:     Application startup complete.",
        "INFO:     Uvicorn running on http://localhost:8000 (Press CTRL+C to quit)",
    ]
    return "\n".join(out) + "\n"


def write_trtllm() -> None:
    src = "tensorrt_llm/_torch/pyexecutor/model_engine.py (TensorRT-LLM 1.1) laid out like a public trtllm-serve 1.1.0rc3 log"
    yhead = "# SYNTHETIC extra_llm_api_options for the transcript of the same name (see make_transcripts.py).\n"
    default_sizes = [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    (HERE / "trtllm_on.yaml").write_text(
        yhead + "cuda_graph_config:\n  enable_padding: true\n  max_batch_size: 64\n"
        "kv_cache_config:\n  enable_block_reuse: true\n  dtype: fp8\nenable_chunked_prefill: true\n"
    )
    (HERE / "trtllm_on.log").write_text(
        header("trtllm-serve (graphs on)", src)
        + trtllm_log(
            use_graph=True, sizes=default_sizes, max_bs=64, newest=False, padding=True, chunked=True, kv_dtype="fp8"
        )
    )
    (HERE / "trtllm_off.yaml").write_text(
        yhead + "cuda_graph_config: null\nkv_cache_config:\n  enable_block_reuse: false\n"
    )
    (HERE / "trtllm_off.log").write_text(
        header("trtllm-serve (cuda_graph_config: null)", src)
        + trtllm_log(use_graph=False, sizes=default_sizes, max_bs=64, newest=False, reuse=False)
    )
    (HERE / "trtllm_maxbatch_missing.yaml").write_text(
        yhead + "cuda_graph_config:\n  batch_sizes: [1, 2, 4, 8, 16, 32]\n  enable_padding: false\nmax_batch_size: 64\n"
    )
    (HERE / "trtllm_maxbatch_missing.log").write_text(
        header("trtllm-serve (max_batch_size 64 not among graph sizes, newest 'generation-only' wording)", src)
        + trtllm_log(use_graph=True, sizes=[1, 2, 4, 8, 16, 32], max_bs=64, newest=True, pycfg=False)
    )


PBTXT_PARAMS = [
    ("max_beam_width", "1"),
    ("FORCE_CPU_ONLY_INPUT_TENSORS", "no"),
    ("gpt_model_type", "{batching}"),
    ("gpt_model_path", "/engines/llama-3.1-8b-fp8/1-gpu"),
    ("max_tokens_in_paged_kv_cache", "${max_tokens_in_paged_kv_cache}"),
    ("batch_scheduler_policy", "max_utilization"),
    ("kv_cache_free_gpu_mem_fraction", "{fraction}"),
    ("enable_kv_cache_reuse", "{reuse}"),
    ("enable_chunked_context", "{chunked}"),
    ("multi_block_mode", "${multi_block_mode}"),
    ("cuda_graph_mode", "{graphs}"),
    ("cuda_graph_cache_size", "{cache}"),
]


def pbtxt(**values: str) -> str:
    head = (
        "# SYNTHETIC tensorrt_llm/config.pbtxt, built from format strings at tensorrtllm_backend\n"
        "# all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt (inputs/outputs trimmed).\n"
        'name: "tensorrt_llm"\nbackend: "tensorrtllm"\nmax_batch_size: 64\n\n'
        "model_transaction_policy {\n  decoupled: true\n}\n\n"
        "instance_group [\n  {\n    count: 1\n    kind : KIND_CPU\n  }\n]\n"
    )
    body = ""
    for key, val in PBTXT_PARAMS:
        val = val.format(**values) if val.startswith("{") else val
        body += f'parameters: {{\n  key: "{key}"\n  value: {{\n    string_value: "{val}"\n  }}\n}}\n'
    return head + body


def triton_log(*, graphs: bool) -> str:
    w = "[TensorRT-LLM][WARNING] "
    lines = [
        "I1125 09:30:03.149548 107 cuda_memory_manager.cc:107] CUDA memory pool is created on device 0 with size 67108864",
        "I1125 09:30:03.158943 107 model_lifecycle.cc:461] loading: tensorrt_llm:1",
        w + "gpu_device_ids is not specified, will be automatically set",
        w + "max_tokens_in_paged_kv_cache is not specified, will use default value",
    ]
    if graphs:
        lines += [
            w
            + "enable_chunked_context is set to true, will use context chunking (requires building the model with use_paged_context_fmha)."
        ]
    else:
        lines += [
            w + "enable_chunked_context is not specified, will be set to false.",
            w + "enable_kv_cache_reuse is not specified, will be set to true",
        ]
    lines += [
        w + "multi_block_mode is not specified, will be set to true",
        w + "enable_context_fmha_fp32_acc is not specified, will be set to false",
    ]
    if not graphs:
        lines += [
            w + "cuda_graph_mode is not specified, will be set to false",
            w + "Setting cudaGraphCacheSize to a value greater than 0 without enabling cudaGraphMode has no effect.",
        ]
    lines += [
        "[TensorRT-LLM][INFO] Engine version 1.1.0 found in the config file, assuming engine(s) built by new builder API.",
        "[TensorRT-LLM][INFO] TRTGptModel maxNumSequences: 64",
        "[TensorRT-LLM][INFO] TRTGptModel maxBatchSize: 64",
        "[TensorRT-LLM][INFO] TRTGptModel mMaxAttentionWindowSize: 8192",
        "[TensorRT-LLM][INFO] Loaded engine size: 8645 MiB",
        "[TensorRT-LLM][INFO] Number of tokens per block: 32.",
        "[TensorRT-LLM][INFO] [MemUsageChange] Allocated 60.12 GiB for max tokens in paged KV cache (981504).",
        "I1125 09:30:14.774805 107 model_lifecycle.cc:827] successfully loaded 'tensorrt_llm'",
        "I1125 09:30:15.517577 107 grpc_server.cc:2519] Started GRPCInferenceService at 0.0.0.0:8001",
        "I1125 09:30:15.517851 107 http_server.cc:4623] Started HTTPService at 0.0.0.0:8000",
        "I1125 09:30:15.558898 107 http_server.cc:315] Started Metrics Service at 0.0.0.0:8002",
    ]
    src = "tensorrtllm_backend inflight_batcher_llm/src/model_instance_state.cc and TensorRT-LLM executor warnings"
    return (
        header(f"tritonserver + tensorrtllm backend (graphs {'on' if graphs else 'off'})", src)
        + "\n".join(lines)
        + "\n"
    )


def write_triton() -> None:
    for name, graphs in (("triton_on", True), ("triton_off", False)):
        d = HERE / name
        d.mkdir(exist_ok=True)
        values = dict(
            batching="inflight_fused_batching",
            fraction="0.9",
            reuse="true" if graphs else "${enable_kv_cache_reuse}",
            chunked="true" if graphs else "${enable_chunked_context}",
            graphs="true" if graphs else "${cuda_graph_mode}",
            cache="64" if graphs else "16",
        )
        (d / "config.pbtxt").write_text(pbtxt(**values))
        (HERE / f"{name}.log").write_text(triton_log(graphs=graphs))
    engine = {
        "_transcript_note": "SYNTHETIC engine config.json trimmed from the schema of a real TensorRT-LLM 0.13 engine config (pretrained_config + build_config.plugin_config); FP8 weights and KV cache.",
        "version": "0.13.0",
        "pretrained_config": {
            "architecture": "LlamaForCausalLM",
            "dtype": "bfloat16",
            "vocab_size": 128256,
            "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1, "cp_size": 1},
            "quantization": {
                "quant_algo": "FP8",
                "kv_cache_quant_algo": "FP8",
                "group_size": 128,
                "exclude_modules": ["lm_head"],
            },
        },
        "build_config": {
            "max_input_len": 8192,
            "max_seq_len": 8192,
            "max_batch_size": 64,
            "max_beam_width": 1,
            "max_num_tokens": 8192,
            "kv_cache_type": "PAGED",
            "plugin_config": {
                "dtype": "bfloat16",
                "gpt_attention_plugin": "auto",
                "gemm_plugin": None,
                "context_fmha": True,
                "paged_kv_cache": True,
                "remove_input_padding": True,
                "tokens_per_block": 32,
                "use_paged_context_fmha": True,
                "use_fp8_context_fmha": True,
                "multiple_profiles": False,
            },
        },
    }
    (HERE / "trt_engine_config.json").write_text(json.dumps(engine, indent=4) + "\n")


if __name__ == "__main__":
    write_vllm()
    write_trtllm()
    write_triton()
    print("\n".join(sorted(p.name for p in HERE.iterdir())))
