# Two entry points; each installs what it needs first (scripts/install.sh is idempotent).
.PHONY: install slo test

install:
	bash scripts/install.sh

# The main job: the ready-made suites as SLO gates against the embedded default target
# (the CPU vLLM serving fixtures/tiny-llama), compared with baselines/<hardware>/.
slo: install
	.venv/bin/python -m pytest -m slo suites/

# The project's own tests (plugin behaviour, client arithmetic, real-vLLM end to end), after the linter and the type checker.
test: install
	.venv/bin/python -m ruff check .
	.venv/bin/python -m mypy
	.venv/bin/python -m pytest tests/
