"""Which backend implements a target kind: the one place that maps `kind` to its code.

Backends are imported on first use, so asking for one kind never loads another's dependencies.
"""

from __future__ import annotations

from .base import Backend


def backend_for(kind: str) -> Backend:
    """The backend implementing a target kind."""
    if kind == "vllm":
        from .vllm import VllmBackend

        return VllmBackend()
    if kind == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend()
    if kind == "trtllm-serve":
        from .trtllm import TrtllmServeBackend

        return TrtllmServeBackend()
    if kind == "triton":
        from .triton import TritonBackend

        return TritonBackend()
    raise ValueError(f"no backend for kind {kind!r}")
