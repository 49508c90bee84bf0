"""The ready-made suites ship in the wheel: `pytest --pyargs pytest_llmserve.suites -m slo` from a project
outside the repository (no repo conftest, no repo pyproject) runs them, keyed like the repo's baselines.

The wheel is built from a copy of the package (pip wheel --no-build-isolation: no network, nothing
written into the checkout) and unpacked as the site directory of the subprocess runs; its entry point
loads the plugin as a `pip install` would. The target is a truth server, so no model server starts.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pytest_llmserve.store.baseline_ids import baseline_id
from pytest_llmserve.settings.config import Target
from pytest_llmserve.testing import Script, TruthServer

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = sorted(p.name for p in (ROOT / "pytest_llmserve" / "suites").glob("test_*.py"))
SLO_ID = "suites/test_slo.py::test_streaming_completions_meet_slo[truth-c1]"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "pytest_llmserve", src / "pytest_llmserve",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (found,) = out.glob("pytest_llmserve-*.whl")
    return found


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked: what a plain `pip install` puts in site-packages."""
    path = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(path)
    return path


def test_the_wheel_ships_every_ready_made_suite_and_the_plugin_entry_point(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        declared = zf.read(entry_points).decode()
    assert PACKAGED and {f"pytest_llmserve/suites/{name}" for name in PACKAGED} <= names
    assert "pytest_llmserve/suites/__init__.py" in names
    assert "[pytest11]\nllmserve = pytest_llmserve.plugin" in declared
    assert not any(n.startswith(("suites/", "fixtures/", "tests/")) for n in names)  # the checkout stays out


def test_each_repo_suite_file_collects_every_test_of_its_packaged_suite():
    """`pytest suites/` in the repository (README's quick start, `make slo`) runs the packaged tests."""
    assert sorted(p.name for p in (ROOT / "suites").glob("test_*.py")) == PACKAGED
    for name in PACKAGED:
        packaged = ast.parse((ROOT / "pytest_llmserve" / "suites" / name).read_text())
        tests = {n.name for n in packaged.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
        shim = ast.parse((ROOT / "suites" / name).read_text())
        imported = {(n.module, a.name) for n in shim.body if isinstance(n, ast.ImportFrom) for a in n.names}
        assert tests and imported == {(f"pytest_llmserve.suites.{name[:-3]}", t) for t in tests}, name


class _Item:
    def __init__(self, nodeid: str, module: str) -> None:
        self.nodeid = nodeid
        self.function = type("F", (), {"__module__": module})


@pytest.mark.parametrize("nodeid", [
    "suites/test_slo.py::test_streaming_completions_meet_slo[a-c1]",
    ".venv/lib/python3.11/site-packages/pytest_llmserve/suites/test_slo.py::test_streaming_completions_meet_slo[a-c1]",
    "test_slo.py::test_streaming_completions_meet_slo[a-c1]",
    "../../opt/venv/lib/python3.12/site-packages/pytest_llmserve/suites/test_slo.py::"
    "test_streaming_completions_meet_slo[a-c1]",
])
def test_a_packaged_suite_test_has_one_baseline_id_however_it_was_collected(nodeid):
    assert baseline_id(_Item(nodeid, "pytest_llmserve.suites.test_slo")) == \
        "suites/test_slo.py::test_streaming_completions_meet_slo[a-c1]"


def test_a_users_own_test_keeps_its_node_id_as_baseline_id():
    assert baseline_id(_Item("tests/test_slo.py::test_x[a]", "test_slo")) == "tests/test_slo.py::test_x[a]"
    assert baseline_id(_Item("tests/test_x.py::test_x[a]", "pytest_llmserve_extra.suites")) == \
        "tests/test_x.py::test_x[a]"


def _pytest(project: Path, site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LLMSERVE"))}
    env["PYTHONPATH"] = str(site)  # the unpacked wheel only: not the checkout
    return subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "pytest_llmserve.suites", "-m", "slo",
                           "-p", "no:cacheprovider", "--llmserve-hardware", "cpu-2c", "--llmserve-requests", "6",
                           *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)


def test_pyargs_from_outside_the_repo_collects_and_runs_the_slo_suite_keyed_like_the_repo(site, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    assert not any((p / "pyproject.toml").exists() or (p / "conftest.py").exists()
                   for p in (project, *project.parents))  # nothing of the repository's reaches it
    where = subprocess.run([sys.executable, "-c", "import pytest_llmserve.suites as s; print(s.__file__)"],
                           cwd=project, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert Path(where.stdout.strip()).is_relative_to(site)
    with TruthServer(Script(ttft_ms=5, itl_ms=3)) as server:
        (project / "llmserve.toml").write_text(
            # wide margins and a short budget: this is about packaging, not about catching a small change
            '[baseline_gate]\nmargin = { ttft_p50_ms = 0.5, ttft_p95_ms = 0.5, itl_p50_ms = 0.5, output_tok_s = 0.5 }\n'
            f'budget_s = 5\n\n[[targets]]\nname = "truth"\nkind = "openai"\nurl = "{server.url}"\n'
            'model = "truth-model"\nconcurrency = [1]\n')
        listed = _pytest(project, site, "--co", "-q")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        ids = [line for line in listed.stdout.splitlines() if "::" in line]
        assert len(ids) == 1 and ids[0].endswith("test_slo.py::test_streaming_completions_meet_slo[truth-c1]")

        record = _pytest(project, site, "--update-baselines", "--llmserve-repeats", "2")
        assert record.returncode == 0, record.stdout[-3000:] + record.stderr[-2000:]
        stored = json.loads((project / "baselines" / "cpu-2c" / "truth.json").read_text())["entries"]
        assert list(stored) == [SLO_ID]  # the repository's key, not the site-packages path

        gate = _pytest(project, site, "--llmserve-report-json", "report.json")
        assert gate.returncode == 0, gate.stdout[-3000:] + gate.stderr[-2000:]
    report = json.loads((project / "report.json").read_text())
    assert report["summary"] == {"checks": 1, "passed": 1, "failed": 0}
    compared = [r for r in report["rows"] if r["metric"] == "ttft_p50_ms"]
    assert compared and compared[0]["baseline"] is not None  # gated against what the first run recorded
    assert report["unused_baselines"] == []


def test_installed_the_tiny_models_fixtures_are_absent_and_the_suites_say_what_to_set(site, monkeypatch):
    probe = ("from pytest_llmserve.suites import checkout_fixture as f; "
             "print(f('prompts', 'stdlib-64.jsonl'), f('tasks'))")
    installed = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(site)},
                               cwd=site, capture_output=True, text=True)
    assert installed.stdout.split() == ["None", "None"], installed.stderr
    from pytest_llmserve.suites import checkout_fixture, test_fp8_accuracy

    assert checkout_fixture("prompts", "stdlib-64.jsonl") == ROOT / "fixtures" / "prompts" / "stdlib-64.jsonl"
    monkeypatch.setattr(test_fp8_accuracy, "BUNDLED_TASKS", None)
    with pytest.raises(pytest.fail.Exception, match="^no task files in the installed package .*: set "
                                                    "options.accuracy_tasks for target 'fp8'"):
        test_fp8_accuracy._task_paths(Target(name="fp8", kind="openai", url="http://127.0.0.1:1", model="m"))
