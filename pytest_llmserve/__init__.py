"""pytest-llmserve: gate LLM serving builds on SLOs, equivalence, accuracy and configuration evidence."""

from __future__ import annotations

__version__ = "0.1.0"
