"""Engine fingerprints: a content hash of the checkpoint plus every build input and the toolchain.

Two builds with the same fingerprint are interchangeable, so a matching cached engine is reused.
Inputs: checkpoint content (every file's relative path, size and SHA-256), the asked build facts
(dtype, quantisation, TP/PP, max batch/input/seq/num-tokens, beam width, plugin flags), how it is
built (builder and extra build arguments), the GPU compute capability and the TensorRT-LLM version.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..store.atomic import atomic_write_text
from ..store.locks import lock_for
from .config import EngineError
from .spec import EngineSpec

_CHUNK = 1 << 20
VERSION_ENV = "LLMSERVE_TRTLLM_VERSION"


@dataclass(frozen=True)
class Toolchain:
    """What the engine is built with and for: TensorRT-LLM version and GPU compute capability."""

    trtllm_version: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"


def detect_toolchain(inventory_fn: Callable[[], Any] | None = None) -> Toolchain:
    """The installed TensorRT-LLM and the first visible GPU (NVML); EngineError says what is missing."""
    version = os.environ.get(VERSION_ENV)
    if not version:
        for dist in ("tensorrt_llm", "tensorrt-llm"):
            try:
                version = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    if not version:
        raise EngineError(
            "cannot tell the TensorRT-LLM version (no tensorrt_llm distribution in this interpreter): "
            f"run pytest inside the TensorRT-LLM environment or set {VERSION_ENV}=<version>"
        )
    if inventory_fn is None:
        from ..hardware import detect_inventory

        inventory_fn = detect_inventory
    inventory = inventory_fn()
    if not inventory.gpus:
        raise EngineError(f"building a TensorRT engine needs a GPU; none visible ({inventory.source})")
    return Toolchain(trtllm_version=version, compute_capability=tuple(inventory.gpus[0].compute_capability))


def checkpoint_digest(root: str | Path, memo_dir: Path | None = None) -> str:
    """SHA-256 over every file under `root` (relative path, size, content hash), in sorted order.

    Hashing tens of GB takes minutes, so per-file hashes are memoised in `memo_dir` keyed by
    (absolute path, size, mtime_ns); a changed file has a new mtime and is hashed again.
    """
    base = Path(root)
    if not base.exists():
        raise EngineError(f"checkpoint {base} does not exist")
    files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
    if not files:
        raise EngineError(f"checkpoint {base} contains no files")
    memo = _Memo(memo_dir) if memo_dir else None
    outer = hashlib.sha256()
    for path in files:
        rel = path.name if base.is_file() else path.relative_to(base).as_posix()
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        digest = memo.get(key) if memo else None
        if digest is None:
            digest = _file_sha256(path)
            if memo:
                memo.put(key, digest)
        outer.update(f"{rel}\0{stat.st_size}\0{digest}\n".encode())
    if memo:
        memo.save()
    return outer.hexdigest()


def fingerprint_inputs(spec: EngineSpec, checkpoint_sha256: str, toolchain: Toolchain) -> dict[str, Any]:
    """Everything that decides an engine, as a JSON-ready mapping (stored next to the engine)."""
    return {
        "checkpoint_sha256": checkpoint_sha256,
        **spec.build_facts(),
        "builder": spec.builder,
        "build_args": list(spec.build_args),
        "compute_capability": f"{toolchain.compute_capability[0]}.{toolchain.compute_capability[1]}",
        "trtllm_version": toolchain.trtllm_version,
    }


def fingerprint(inputs: dict[str, Any]) -> str:
    """A short stable name for the inputs (24 hex digits of SHA-256 over canonical JSON)."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _Memo:
    """A JSON map of file key -> sha256 shared by processes (file lock, atomic replace)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "checkpoint-hashes.json"
        self.lock = lock_for(self.path)
        self.entries = self._read()
        self.new: dict[str, str] = {}

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> str | None:
        return self.new.get(key) or self.entries.get(key)

    def put(self, key: str, digest: str) -> None:
        self.new[key] = digest

    def save(self) -> None:
        if not self.new:
            return
        with self.lock:
            merged = {**self._read(), **self.new}
            atomic_write_text(self.path, json.dumps(merged))
