"""A seeded prompt set of any size cut from a small one: windows of its token stream.

Prompt i takes, from `default_rng([seed, i])`, a length in [min_len, max_len] and an offset into the
concatenated token ids of the source prompts, and is the source's common first token (BOS, when every
source prompt starts with the same one) followed by that window. The same (source, n, seed, lengths)
always gives the same prompts, so both engines, and every later run, see identical token ids.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .hf import Prompt


def window_prompts(source: Sequence[Prompt], n: int, *, seed: int = 0, min_len: int = 8,
                   max_len: int = 64) -> tuple[Prompt, ...]:
    """`n` prompts cut from `source`'s token stream (ValueError for bad sizes or an empty source)."""
    if n < 1:
        raise ValueError(f"prompts = {n} must be >= 1")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_prompt_len <= max_prompt_len, got {min_len} and {max_len}")
    firsts = {p.token_ids[0] for p in source}
    bos = firsts.pop() if len(firsts) == 1 and all(len(p.token_ids) > 1 for p in source) else None
    stream = np.concatenate([np.asarray(p.token_ids[1:] if bos is not None else p.token_ids, dtype=np.int64)
                             for p in source]) if source else np.zeros(0, dtype=np.int64)
    if stream.size == 0:
        raise ValueError("the source prompt set holds no tokens to cut prompts from")
    head = () if bos is None else (int(bos),)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        length = int(rng.integers(min_len, max_len + 1)) - len(head)
        length = max(1, min(length, stream.size))
        start = int(rng.integers(0, stream.size - length + 1))
        ids = head + tuple(int(t) for t in stream[start:start + length])
        out.append(Prompt(f"w{i:05d}", ids))
    return tuple(out)
