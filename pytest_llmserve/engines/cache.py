"""The engine cache: one directory per fingerprint, built once across processes, never half-written.

Layout under the cache root:
    <fingerprint>/               a finished engine (rank*.engine, config.json, llmserve-engine.json, build.log)
    .tmp-<fingerprint>-<id>/     a build in progress (out/, work/, build.log); renamed to <fingerprint>/
                                 only after the build succeeded and config.json says what was asked
    failed-<fingerprint>.log     the log of the last failed build (no engine is kept)
A finished engine is recognised by its `llmserve-engine.json` marker, which is written last. One process
checks/builds a fingerprint at a time, under a lock kept outside the cache root (locks.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from filelock import Timeout

from ..store.locks import lock_for
from .build import ArgvTemplate, check_quantization_supported, default_templates, expand, run_plan, template_values
from .config import EngineConfig, EngineError, checkpoint_quantization, read_engine_config
from .fingerprint import Toolchain, checkpoint_digest, fingerprint, fingerprint_inputs
from .spec import EngineSpec, mismatches

MARKER = "llmserve-engine.json"
CACHE_ENV = "LLMSERVE_ENGINE_CACHE"
DEFAULT_LOCK_TIMEOUT_S = 4 * 3600.0


def default_cache_dir() -> Path:
    """$LLMSERVE_ENGINE_CACHE, else ~/.cache/pytest-llmserve/engines."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pytest-llmserve" / "engines"


@dataclass(frozen=True)
class EngineHandle:
    """A ready engine: where it is, what it records, and whether this call built it."""

    path: Path
    config: EngineConfig
    fingerprint: str | None
    built: bool
    build_seconds: float | None = None


@dataclass
class EngineCache:
    """Build-or-reuse engines under `root`; `templates` overrides the build commands (argv templates)."""

    root: Path
    templates: Sequence[ArgvTemplate] | None = None
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
    progress: Callable[[str], None] = lambda message: None

    def get_or_build(self, spec: EngineSpec, toolchain: Toolchain) -> EngineHandle:
        """The cached engine matching `spec`; built (once, under a cross-process lock) when missing."""
        if spec.checkpoint is None:
            raise EngineError("no checkpoint to build from: set the target's `model` (or engine.checkpoint)")
        self.root.mkdir(parents=True, exist_ok=True)
        digest = checkpoint_digest(spec.checkpoint, memo_dir=self.root)
        inputs = fingerprint_inputs(spec, digest, toolchain)
        fp = fingerprint(inputs)
        final = self.root / fp
        lock = lock_for(self.root / fp)
        try:
            with lock.acquire(timeout=self.lock_timeout_s):
                if (final / MARKER).is_file():
                    return self._reuse(spec, final, fp)
                self._clear_leftovers(fp, final)
                return self._build(spec, inputs, fp, final)
        except Timeout:
            raise EngineError(
                f"waited {self.lock_timeout_s:.0f} s for another process building engine {fp} in {self.root} "
                f"(it holds {lock.lock_file}; the lock ends with that process); let it finish or stop it"
            ) from None

    def _reuse(self, spec: EngineSpec, final: Path, fp: str) -> EngineHandle:
        config = read_engine_config(final)
        problems = mismatches(spec, config)
        if problems:
            # same fingerprint, different record: the cache entry was tampered with or is corrupt
            raise EngineError(f"cached engine {final} does not record what was asked: {'; '.join(problems)}; "
                              "delete that directory to rebuild it")
        self.progress(f"llmserve: reusing cached engine {final} ({config.describe()})")
        return EngineHandle(path=final, config=config, fingerprint=fp, built=False)

    def _clear_leftovers(self, fp: str, final: Path) -> None:
        """Remove unfinished builds of this fingerprint (we hold its lock, so none is running)."""
        for tmp in self.root.glob(f".tmp-{fp}-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():  # a directory without the marker is an interrupted rename or a manual copy
            shutil.rmtree(final, ignore_errors=True)

    def _build(self, spec: EngineSpec, inputs: dict, fp: str, final: Path) -> EngineHandle:
        tmp = self.root / f".tmp-{fp}-{uuid.uuid4().hex[:8]}"
        out, work = tmp / "out", tmp / "work"
        out.mkdir(parents=True)
        work.mkdir()
        log = tmp / "build.log"
        templates = list(self.templates) if self.templates is not None else default_templates(spec)
        check_quantization_supported(spec, templates)
        plan = expand(templates, template_values(spec, out, work))
        self.progress(f"llmserve: building engine {fp} into {self.root} (log {log})")
        started = time.monotonic()
        try:
            run_plan(plan, log, cwd=work, timeout_s=spec.build_timeout_s)
            config = read_engine_config(out)
            problems = mismatches(spec, config)
            if problems:
                raise EngineError(
                    f"the build finished but its config.json does not record what was asked: {'; '.join(problems)}"
                )
            seconds = time.monotonic() - started
            marker = {"fingerprint": fp, "inputs": inputs, "commands": [list(c) for c in plan.commands],
                      "build_seconds": round(seconds, 3), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            shutil.copy2(log, out / "build.log")
            (out / MARKER).write_text(json.dumps(marker, indent=2))  # written last: marks the engine complete
            os.rename(out, final)
        except BaseException as exc:
            failed = self.root / f"failed-{fp}.log"
            if log.exists():
                shutil.copy2(log, failed)
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, EngineError):
                raise EngineError(f"{exc}\n(build log kept at {failed}; no engine was cached)") from None
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        self.progress(f"llmserve: built engine {final} in {seconds:.0f} s ({config.describe()})")
        return EngineHandle(path=final, config=read_engine_config(final), fingerprint=fp, built=True,
                            build_seconds=seconds)


def load_engine(spec: EngineSpec, engine_dir: Path | None = None) -> EngineHandle:
    """An existing engine directory, checked against every fact the spec asks for."""
    path = Path(engine_dir or spec.dir or "")
    config = read_engine_config(path)
    problems = mismatches(spec, config)
    if problems:
        raise EngineError(f"engine {path} does not record what the target asks: {'; '.join(problems)}; "
                          "rebuild it or change the target's engine table")
    return EngineHandle(path=path, config=config, fingerprint=None, built=False)


def prepare_engine(spec: EngineSpec, toolchain_fn: Callable[[], Toolchain], cache: EngineCache | None = None) -> EngineHandle:
    """`engine.dir` when given (checked), else the cache (built when missing)."""
    if spec.dir is not None:
        return load_engine(spec)
    cache = cache or EngineCache(root=spec.cache_dir or default_cache_dir())
    return cache.get_or_build(spec, toolchain_fn())


def verify_checkpoint_quantization(spec: EngineSpec) -> None:
    """PyTorch backend: quantisation comes from the checkpoint, so it must declare what was asked."""
    if spec.checkpoint is None or not (spec.quant_algo or spec.kv_cache_quant_algo):
        return
    if not spec.checkpoint.is_dir():
        raise EngineError(f"engine.quantization is set but {spec.checkpoint} is not a local checkpoint to check")
    algo, kv = checkpoint_quantization(spec.checkpoint)
    problems = []
    if spec.quant_algo and spec.quant_algo != algo:
        problems.append(f"quant_algo: asked {spec.quant_algo!r}, checkpoint declares {algo!r}")
    if spec.kv_cache_quant_algo and spec.kv_cache_quant_algo != kv:
        problems.append(f"kv_cache_quant_algo: asked {spec.kv_cache_quant_algo!r}, checkpoint declares {kv!r}")
    if problems:
        raise EngineError(
            f"{spec.checkpoint}: {'; '.join(problems)} (hf_quant_config.json / config.json:quantization_config). "
            "With the pytorch backend quantisation comes from the checkpoint: use a quantised (e.g. ModelOpt) "
            "checkpoint, or backend = 'trt' to build a quantised engine"
        )
