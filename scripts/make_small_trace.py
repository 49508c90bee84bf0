"""Write pytest_llmserve/data/mooncake_small.jsonl: a small seeded Mooncake-format trace (40 requests, ~3 s).

Poisson arrivals at ~13 requests/s; 5 groups (documents / conversations) whose requests share their
leading 512-token hash blocks, then 0-2 blocks of their own; outputs 16-128 tokens.
Run: python scripts/make_small_trace.py  (deterministic: same file every time)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "pytest_llmserve" / "data" / "mooncake_small.jsonl"


def main() -> None:
    rng = np.random.default_rng(17)
    t = 0.0
    next_private = 1000
    lines = []
    for _ in range(40):
        group = int(rng.integers(0, 5))
        shared = [group * 10 + k for k in range(int(rng.integers(1, 4)))]
        private = list(range(next_private, next_private + int(rng.integers(0, 3))))
        next_private += len(private)
        hashes = shared + private
        input_length = 512 * len(hashes) - int(rng.integers(0, 256))
        lines.append({"timestamp": int(round(t)), "input_length": input_length,
                      "output_length": int(rng.integers(16, 129)), "hash_ids": hashes})
        t += float(rng.exponential(75.0))  # ms
    OUT.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"wrote {OUT} ({len(lines)} requests over {lines[-1]['timestamp']} ms)")


if __name__ == "__main__":
    main()
