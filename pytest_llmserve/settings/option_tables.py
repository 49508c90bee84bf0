"""Which keys of a target's `options` table belong to the plugin's suites and which to the backend.

`options` holds both: the suites' tables and keys (equivalence, precision, accuracy_*, promotion_*,
engine_equivalence, equivalence_reference) and, for trtllm-serve and Triton, the server's own
settings. A backend sees only `backend_options(target)`, so a suite key is never written into
trtllm-serve's `--extra_llm_api_options` YAML nor refused as an unknown Triton option.
"""

from __future__ import annotations

from typing import Any

SUITE_OPTION_KEYS = frozenset({
    "equivalence", "precision", "engine_equivalence", "equivalence_reference",
    "accuracy_reference", "accuracy_tasks", "accuracy_tolerance", "accuracy_alpha", "accuracy_beta",
    "accuracy_concurrency", "accuracy_detectable",
    "promotion_incumbent", "promotion_concurrency", "promotion_input_len", "promotion_output_len",
    "promotion_requests", "promotion_rounds", "promotion_margin", "promotion_metrics",
})


def backend_options(target: Any) -> dict[str, Any]:
    """The target's options less the keys the suites read (what a server backend may consume)."""
    return {k: v for k, v in target.options.items() if k not in SUITE_OPTION_KEYS}
