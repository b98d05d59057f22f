"""Files written whole or not at all: a temporary file in the same folder, then a rename."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Calls `write(temporary_path)`, flushes the file to disk and renames it to `path`.

    `os.replace` is atomic on POSIX and Windows: a process killed at any moment leaves the old
    `path` (or none) or the new one, never half of one. The file gets the usual permissions
    (0666 less the umask), not the private ones of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def remove_leftovers(path: str | Path) -> list[Path]:
    """Deletes the temporary files that `atomic_write(path, ...)` calls of a killed process left
    beside `path` (`.NAME.*.part`), and returns them. Call it only where no other process is
    writing `path` (a resumed run: one process writes its checkpoint and results)."""
    path = Path(path)
    leftovers = sorted(path.parent.glob(f".{path.name}.*.part")) if path.parent.is_dir() else []
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers
