"""The id a test's baseline entries are stored under: its node id, except for the ready-made suites.

A ready-made suite's node id depends on how it was collected: `suites/test_slo.py::...` in the
repository, `.venv/lib/python3.11/site-packages/pytest_llmserve/suites/test_slo.py::...` (or a path
outside the rootdir) under `pytest --pyargs pytest_llmserve.suites`. Its baselines are keyed
`suites/<file>::<test>` by where the test function is defined, so both forms, on any machine and in
any virtual environment, read and write the same entries.
"""

from __future__ import annotations

from typing import Any

SUITES_PACKAGE = "pytest_llmserve.suites."


def baseline_id(item: Any) -> str:
    """`suites/<module>.py::<rest of the node id>` for a test defined in pytest_llmserve.suites, else its node id."""
    module = getattr(getattr(item, "function", None), "__module__", None) or ""
    if not module.startswith(SUITES_PACKAGE) or "::" not in item.nodeid:
        return item.nodeid
    leaf = module[len(SUITES_PACKAGE):].replace(".", "/")
    return f"suites/{leaf}.py::{item.nodeid.split('::', 1)[1]}"
