"""Pieces the `sweep` and `promote` commands share: argument parsing that exits 3, model discovery, probing."""

from __future__ import annotations

import argparse
from typing import NoReturn, Sequence

from ..gates.live_run import LiveEndpoint
from ..servers.capabilities import Capabilities, parse_override_args
from ..servers.capability_probe import probe_url


def first_model(url: str) -> str:
    """The first model id of GET /v1/models, or a ValueError saying to pass --model."""
    import httpx

    base = url.rstrip("/").removesuffix("/v1")
    try:
        data = httpx.get(f"{base}/v1/models", timeout=10.0).raise_for_status().json().get("data") or []
    except (httpx.HTTPError, ValueError) as exc:
        raise ValueError(f"cannot list models at {base}/v1/models ({exc}); is the server up? or pass --model") from None
    ids = [m["id"] for m in data if isinstance(m, dict) and "id" in m]
    if not ids:
        raise ValueError(f"{base}/v1/models lists no model; pass --model NAME")
    return ids[0]


def probe_endpoints(endpoints: Sequence[LiveEndpoint], overrides: Sequence[str]) -> dict[str, Capabilities]:
    """Each endpoint's probed capabilities (with `--capability` overrides), before any load runs."""
    table = parse_override_args(list(overrides))
    return {e.name: probe_url(e.url.rstrip("/").removesuffix("/v1"), e.model, overrides=table) for e in endpoints}


def metrics_url_for(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1") + "/metrics"


class UsageExit(Exception):
    """Bad arguments: the CLI prints the message and exits 3 (0-2 carry verdicts)."""


class Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad arguments, which `llmserve promote` uses for "inconclusive"; raise instead."""

    def error(self, message: str) -> NoReturn:
        raise UsageExit(f"{message} (see --help)")


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise UsageExit(f"--concurrency {text!r}: give integers separated by commas, e.g. 1,2,4,8") from None
    if not levels or min(levels) < 1:
        raise UsageExit(f"--concurrency {text!r}: every level must be >= 1")
    return levels


def parse_named(items: Sequence[str], flag: str) -> dict[str, str]:
    """NAME=VALUE pairs; a bare VALUE gets the name '' (meaning: every target)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            name, value = "", item
        elif not value or "://" in name:
            raise UsageExit(f"{flag} {item!r}: use NAME=VALUE, e.g. {flag} vllm=http://127.0.0.1:8000")
        out[name] = value
    return out
