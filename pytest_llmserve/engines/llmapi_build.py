"""Build a TensorRT engine from a Hugging Face checkpoint with TensorRT-LLM's LLM API, then save it.

Run on a GPU runner by the engine cache (`python -m pytest_llmserve.engines.llmapi_build ...`);
it imports tensorrt_llm, so it cannot run where TensorRT-LLM is not installed. The TensorRT-backend
`LLM` class is `tensorrt_llm._tensorrt_engine.LLM` in releases whose default `LLM` is the PyTorch
backend, and `tensorrt_llm.LLM` before that; `LLM.save(dir)` writes config.json + rank*.engine.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tp_size", type=int, default=1)
    parser.add_argument("--pp_size", type=int, default=1)
    for name in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "max_beam_width"):
        parser.add_argument(f"--{name}", type=int, default=None)
    parser.add_argument("--quant_algo", default=None, help="e.g. FP8 (ModelOpt calibration runs inside the build)")
    parser.add_argument("--kv_cache_quant_algo", default=None, help="e.g. FP8")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from tensorrt_llm._tensorrt_engine import LLM  # releases where tensorrt_llm.LLM is the PyTorch backend
    except ImportError:
        from tensorrt_llm import LLM
    from tensorrt_llm.llmapi import BuildConfig, QuantAlgo, QuantConfig

    build_kwargs = {k: getattr(args, k) for k in ("max_batch_size", "max_input_len", "max_seq_len",
                                                   "max_num_tokens", "max_beam_width") if getattr(args, k) is not None}
    kwargs = {}
    if args.quant_algo or args.kv_cache_quant_algo:
        kwargs["quant_config"] = QuantConfig(
            quant_algo=QuantAlgo[args.quant_algo] if args.quant_algo else None,
            kv_cache_quant_algo=QuantAlgo[args.kv_cache_quant_algo] if args.kv_cache_quant_algo else None,
        )
    llm = LLM(model=args.model, dtype=args.dtype, tensor_parallel_size=args.tp_size,
              pipeline_parallel_size=args.pp_size, build_config=BuildConfig(**build_kwargs), **kwargs)
    try:
        llm.save(args.output_dir)
    finally:
        llm.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
