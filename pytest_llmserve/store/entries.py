"""The one store behind baselines and accuracy references: locked entry files and the run's ledger.

Both kinds are JSON files of ``{..header.., "entries": {id: entry}}`` under ``<baselines_dir>/<hardware>/``
(baselines.py: ``<target>.json``; accuracy_refs.py: ``accuracy/<model>.json``). Each kind keeps its own
layout, validation and messages; this module holds what they share: the read-modify-write of one
entry under the file's lock, landing with an atomic rename (parallel xdist workers never clobber each
other, a crash never leaves half a file), and the `StoreLedger` of what this run read and changed,
which the xdist controller merges from its workers and the end-of-run report lists (changes, and the
unused entries each kind derives from it).

Equivalence references (reference/hf.py, reference/engine_outputs.py) are not entries of this store: each is a
cache file named by a digest of everything it depends on, so a rewrite never changes a committed
answer (there is no old -> new to report) and a file no key names is merely stale, not a test gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .atomic import atomic_write_json
from .locks import lock_for

LOCK_TIMEOUT_S = 120


@dataclass(frozen=True)
class EntryChange:
    """What --update-baselines changed for one entry of a store file (old is None for a new entry)."""

    path: Path
    test_id: str  # the entry's id: a test id for baselines, task|precision for accuracy references
    old: Mapping[str, Any] | None
    new: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "test_id": self.test_id, "old": self.old, "new": self.new}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EntryChange:
        return cls(Path(data["path"]), data["test_id"], data["old"], data["new"])


@dataclass
class StoreLedger:
    """Which entries of which store files this run used, and what it changed; one per session, every kind."""

    used: set[tuple[str, str]] = field(default_factory=set)  # (file path, entry id)
    changes: list[EntryChange] = field(default_factory=list)

    def mark_used(self, path: Path, entry_id: str) -> None:
        self.used.add((str(path), entry_id))

    def was_used(self, path: Path, entry_id: str) -> bool:
        return (str(path), entry_id) in self.used

    def used_in(self, path: Path) -> set[str]:
        """Entry ids of one file that this run used."""
        return {entry_id for p, entry_id in self.used if p == str(path)}

    def used_files(self) -> list[Path]:
        return sorted({Path(p) for p, _ in self.used})

    def add_change(self, change: EntryChange) -> None:
        self.changes.append(change)
        self.mark_used(change.path, change.test_id)

    def to_dict(self) -> dict[str, Any]:
        """The ledger as JSON-ready data (what an xdist worker sends its controller)."""
        return {"used": sorted(self.used), "changes": [c.to_dict() for c in self.changes]}

    def merge(self, data: Mapping[str, Any]) -> None:
        """Fold in another process's ledger (`to_dict` form); changes stay sorted by file and entry."""
        self.used.update((path, entry_id) for path, entry_id in data["used"])
        self.changes.extend(EntryChange.from_dict(c) for c in data["changes"])
        self.changes.sort(key=lambda c: (str(c.path), c.test_id))


def write_entry(path: Path, entry_id: str, entry: Mapping[str, Any], *, ledger: StoreLedger,
                read: Callable[[Path], dict[str, Any]], header: Callable[[dict[str, Any]], dict[str, Any]],
                summary: Callable[[Mapping[str, Any]], Mapping[str, Any]],
                before_write: Callable[[], None] | None = None) -> EntryChange:
    """Set one entry, keeping every other entry of the file, under its lock; record the change in `ledger`.

    `read` validates the file (raising, so a corrupt file is never overwritten), `header` gives the
    top-level fields beside the sorted entries, `summary` the comparable values a change shows, and
    `before_write` writes anything that must land under the same lock before the file (a sidecar).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock_for(path, timeout=LOCK_TIMEOUT_S):
        entries = read(path)
        old = entries.get(entry_id)
        entries[entry_id] = dict(entry)
        if before_write is not None:
            before_write()
        atomic_write_json(path, {**header(entries), "entries": dict(sorted(entries.items()))})
    change = EntryChange(path, entry_id, summary(old) if old is not None else None, summary(entry))
    ledger.add_change(change)
    return change


def unused_ids(stored: Iterable[str], used: set[str], in_scope: Callable[[str], bool]) -> list[str]:
    """Stored ids in scope that this run did not use, sorted."""
    return sorted(i for i in stored if in_scope(i) and i not in used)
