"""Cross-process locks for files in the user's tree, kept outside it (nothing to commit or .gitignore).

    with lock_for(path, timeout=120):   # read-modify-write `path` exclusively
        ...

The lock file lives in `<temp dir>/llmserve-locks-<uid>/`, named by a hash of the resolved path, so every
process on this machine that writes the same file (xdist workers, parallel sessions, a CLI) takes the
same lock, whatever its working directory or the spelling of the path. Lock files are never deleted:
unlinking one that another process waits on would let two processes in at once. Processes on other
machines sharing the directory over a network file system do not exclude each other.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from filelock import FileLock

LOCK_DIR_ENV = "LLMSERVE_LOCK_DIR"


def lock_dir() -> Path:
    """$LLMSERVE_LOCK_DIR, else a per-user directory under the system temp dir (created 0700)."""
    configured = os.environ.get(LOCK_DIR_ENV, "").strip()
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    directory = Path(configured) if configured else Path(tempfile.gettempdir()) / f"llmserve-locks-{uid}"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def lock_path(path: Path | str) -> Path:
    """Where the lock for `path` lives: the hash of its resolved path, with its name for humans."""
    resolved = Path(path).resolve()
    digest = hashlib.sha256(str(resolved).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return lock_dir() / f"{resolved.name[:64]}-{digest}.lock"


def lock_for(path: Path | str, timeout: float = -1) -> FileLock:
    """A FileLock guarding `path` (timeout in seconds; -1 waits forever)."""
    return FileLock(str(lock_path(path)), timeout=timeout)
