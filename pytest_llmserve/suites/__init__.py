"""The ready-made suites, shipped with the package: `pytest --pyargs pytest_llmserve.suites -m slo`.

In a source checkout, `pytest -m slo suites/` runs the same tests (suites/*.py import them from here).
Baselines are keyed `suites/<file>::<test>` however the suites were collected (baseline_ids.py), so
either invocation, from any directory or virtual environment, reads the same entries.
"""

from __future__ import annotations

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]  # the repository in a source checkout, site-packages when installed


def checkout_fixture(*parts: str) -> Path | None:
    """A file or folder under the source checkout's fixtures/ (the tiny model's prompt set and tasks), or
    None in an installed package, which does not ship them: the target's options must name its own."""
    path = CHECKOUT.joinpath("fixtures", *parts)
    return path if (CHECKOUT / "pyproject.toml").is_file() and path.exists() else None
