"""Locks for files in the user's tree live outside it, and still exclude other processes on the machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import Timeout

from pytest_llmserve.store.accuracy_refs import AccuracyReferences
from pytest_llmserve.store.baselines import BaselineStore
from pytest_llmserve.store.locks import LOCK_DIR_ENV, lock_for, lock_path
from pytest_llmserve.evidence.precision import PrecisionInfo

# Holds the lock for argv[1], says "held" on stdout, releases it when its stdin gets a line.
HOLDER = """
import sys
from pytest_llmserve.store.locks import lock_for
with lock_for(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "locks"
    monkeypatch.setenv(LOCK_DIR_ENV, str(directory))
    return directory


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_baseline_update_leaves_no_lock_file_beside_the_baselines(tmp_path, lock_dir):
    root = tmp_path / "baselines"
    store = BaselineStore(root=root, hardware="cpu-2c", update=True)
    store.record("tiny", "suites/test_slo.py::test_x[tiny-c1]", {"ttft_p95_ms": 12.0})
    store.record("tiny", "suites/test_slo.py::test_x[tiny-c4]", {"ttft_p95_ms": 15.0})
    assert _files(root) == ["cpu-2c/tiny.json"]
    assert [p.name for p in lock_dir.iterdir()] == [lock_path(root / "cpu-2c" / "tiny.json").name]


def test_an_accuracy_reference_update_leaves_no_lock_file_beside_the_references(tmp_path, lock_dir):
    refs = AccuracyReferences(tmp_path / "baselines", "cpu-2c", "tiny-llama", update=True)
    info = PrecisionInfo("bfloat16", None, None, "declared", "test")
    refs.check("next_token", "sha1", info, {"n": 10, "accuracy": 0.5, "mean_loglik": -1.0})
    assert _files(tmp_path / "baselines") == ["cpu-2c/accuracy/tiny-llama.json"]


def test_every_spelling_of_a_path_shares_one_lock(tmp_path, lock_dir, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    spellings = ["real/b.json", str(tmp_path / "real" / "b.json"), "link/b.json", "real/../real/b.json"]
    assert len({lock_path(s) for s in spellings}) == 1
    assert lock_path("real/b.json") != lock_path("real/c.json")
    assert lock_path("real/b.json").parent == lock_dir


def test_a_lock_held_by_another_process_excludes_this_one_until_released(tmp_path, lock_dir):
    target = tmp_path / "baselines" / "cpu-2c" / "tiny.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Timeout):
            lock_for(target).acquire(blocking=False)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        with lock_for(target, timeout=60):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert not target.parent.exists()  # the lock created nothing in the user's tree


def test_without_a_setting_locks_go_to_a_per_user_directory_under_the_temp_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(LOCK_DIR_ENV, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    assert lock_path("b.json").parent == tmp_path / f"llmserve-locks-{os.getuid()}"
    assert (tmp_path / f"llmserve-locks-{os.getuid()}").stat().st_mode & 0o777 == 0o700
