"""Reading what a server wrote about itself: log lines, quoted evidence, YAML keys, Triton parameters.

The generic toolkit the per-backend readers (`vllm_evidence`, `trtllm_evidence`, `triton_evidence`)
build on. Logs are read as the servers wrote them and tolerate drift: ANSI colour, CRLF, tqdm
carriage returns, long config-dump lines (clipped around the match when quoted).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Evidence:
    """One line a detector read; `line_no` is 1-based, 0 for a configuration value (no file line)."""

    source: str
    line_no: int
    text: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line_no}" if self.line_no else self.source
        return f"{where}: {self.text}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "line_no": self.line_no, "text": self.text}


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def read_log(path: str | Path) -> str:
    """A log as text with its carriage returns kept, so line numbers match an editor's.

    `Path.read_text()` turns tqdm's carriage-return redraws into extra lines and shifts every later
    line number.
    """
    return Path(path).read_bytes().decode("utf-8", "replace")


def log_lines(text: str) -> list[str]:
    """Lines of a log without ANSI colour; tqdm's carriage-return redraws stay inside a line."""
    return [_ANSI.sub("", line).rstrip("\r") for line in text.split("\n")]


def clip(line: str, start: int | None = None, end: int | None = None, context: int = 70) -> str:
    """The line, or for a long line (vLLM's config dump) the matched span with context around it."""
    line = line.replace("\r", " ")
    if start is None or end is None or len(line) <= 2 * context + (end - start) + 40:
        return line.strip()
    lo, hi = max(0, start - context), min(len(line), end + context)
    return ("…" if lo else "") + line[lo:hi] + ("…" if hi < len(line) else "")


def search_lines(lines: list[str], pattern: re.Pattern[str]) -> list[tuple[int, str, re.Match[str]]]:
    """(line_no, line, match) for every line the pattern matches."""
    return [(i + 1, line, m) for i, line in enumerate(lines) if (m := pattern.search(line))]


def evidence_at(source: str, hit: tuple[int, str, re.Match[str]]) -> Evidence:
    """Evidence for a search_lines hit, clipped around the match on long lines."""
    line_no, line, m = hit
    return Evidence(source, line_no, clip(line, m.start(), m.end()))


def ints(text: str) -> tuple[int, ...]:
    """Every integer in the text, in order."""
    return tuple(int(x) for x in re.findall(r"\d+", text))


def locate_key(text: str | None, path: str) -> tuple[int, str]:
    """(line_no, stripped line) of a YAML key given as a dotted path ('kv_cache_config.dtype'); (0, '') if absent."""
    lines = (text or "").splitlines()
    line_no, indent = 0, -1
    for key in path.split("."):
        pat = re.compile(rf"^(\s*){re.escape(key)}\s*:")
        for i in range(line_no, len(lines)):
            width = len(lines[i]) - len(lines[i].lstrip())
            if line_no and lines[i].strip() and not lines[i].lstrip().startswith("#") and width <= indent:
                return 0, ""  # left the parent's block without finding the child
            if (m := pat.match(lines[i])) and len(m[1]) > indent:
                line_no, indent = i + 1, len(m[1])
                break
        else:
            return 0, ""
    return (line_no, lines[line_no - 1].strip()) if line_no else (0, "")


def dig(cfg: Mapping[str, Any] | None, *paths: str) -> tuple[str, Any] | None:
    """First dotted path present in the config: (path, value)."""
    for path in paths:
        node: Any = cfg
        for key in path.split("."):
            if not isinstance(node, Mapping) or key not in node:
                break
            node = node[key]
        else:
            return path, node
    return None


# ---------------------------------------------------------------- Triton config.pbtxt
_PARAM = re.compile(
    r'key\s*:\s*"(?P<key>[^"]+)"\s*,?\s*value\s*:?\s*\{\s*string_value\s*:\s*"(?P<val>[^"]*)"\s*\}', re.S
)


def _strip_comment(line: str) -> str:
    quoted = False
    for i, ch in enumerate(line):
        quoted = quoted != (ch == '"')
        if ch == "#" and not quoted:
            return line[:i]
    return line


def pbtxt_parameters(text: str) -> dict[str, tuple[str, int]]:
    """`parameters` of a Triton config.pbtxt: key -> (string_value, line_no of the key); comments ignored."""
    clean = "\n".join(_strip_comment(line) for line in text.split("\n"))
    return {m["key"]: (m["val"], clean.count("\n", 0, m.start()) + 1) for m in _PARAM.finditer(clean)}


def pbtxt_bool(value: str | None) -> bool | Literal["invalid"] | None:
    """The backend's own bool parsing: None when unset or an unfilled ${template}, 'invalid' otherwise."""
    if value is None or value == "" or value.startswith("${"):
        return None
    if value in ("True", "true", "TRUE", "1"):
        return True
    if value in ("False", "false", "FALSE", "0"):
        return False
    return "invalid"


def param_evidence(source: str, params: Mapping[str, tuple[str, int]], key: str) -> Evidence:
    value, line_no = params[key]
    return Evidence(source, line_no, f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
