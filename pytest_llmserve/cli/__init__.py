"""`llmserve` command line: one module per command (load, sweep, promote), dispatched here.

`llmserve load ...` streams load at one server; `llmserve sweep ...` and `llmserve promote ...` parse
their own arguments (bad ones exit 3, since 0-2 carry their verdicts).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import load
from .load import format_table

__all__ = ["format_table", "main"]


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmserve", description="pytest-llmserve tools")
    sub = p.add_subparsers(dest="command", required=True)
    # listed here for --help; main() hands their arguments to cli.sweep.main / cli.promote.main
    sub.add_parser("sweep", help="concurrency sweep of one or more targets: curves, crossovers, PNG/JSON/Markdown",
                   add_help=False)
    sub.add_parser("promote", help="promotion gate, candidate vs incumbent: exit 0 pass, 1 regression, "
                   "2 inconclusive", add_help=False)
    load.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("sweep", "promote"):  # these parse their own arguments (exit 3 on bad ones)
        from . import promote, sweep

        return (sweep.main if argv[0] == "sweep" else promote.main)(argv[1:])
    args = _build_parser().parse_args(argv)
    if args.command == "load":
        return load.run(args)
    return 2  # pragma: no cover - argparse enforces the subcommand
