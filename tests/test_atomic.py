"""Atomic writes: the new file whole and readable, or the old one untouched and no temp left behind."""

from __future__ import annotations

import json

import pytest

from pytest_llmserve.store import atomic
from pytest_llmserve.store.atomic import atomic_write_json, atomic_write_text


def test_writes_reviewable_json_readable_by_everyone(tmp_path):
    path = tmp_path / "b.json"
    atomic_write_json(path, {"z": 1, "a": [1, 2]})
    assert path.read_text() == json.dumps({"a": [1, 2], "z": 1}, indent=2) + "\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]


def test_a_failed_rename_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "b.json"
    path.write_text("old\n")

    def refuse(src, dst):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt  # even Ctrl-C at the last moment

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]
