"""Files every command writes: atomically (a reader sees the old file or the whole new one, never a
part), with the permissions the user's umask asks for, and never outside the folder they belong in.
Torch-free."""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from seqbench.strict import ConfigError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic(path: Path, write: Callable[[str], None]) -> None:
    """Call write(tmp) on a temporary file beside path, fsync it, then rename it over path.

    The temporary file is created private (mkstemp: 0600) and given the mode a plain open() would
    have (0666 minus the umask) before the rename, so results on shared storage stay readable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, text: str) -> None:
    """Write text to path atomically (see atomic)."""
    atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files that a writer killed mid-write left in folder (atomic's `.NAME.*.tmp`)."""
    return sorted(folder.glob(".*.tmp")) if folder.is_dir() else []


def single_component(field: str, name: str) -> str:
    """name, if it is one safe path component (letters, digits, '.', '-', '_'; no '/', no '..'),
    else a ConfigError naming the field."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{field}: {name!r} is not a plain name; use letters, digits, '.', '-' "
                          "and '_' (one folder or file name, no path)")
    return name


def check_writable(folder: Path, field: str) -> None:
    """Fail early, before any work: folder (created if missing) must be a writable folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{field}: {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{field}: cannot write into {folder}: {exc.strerror}") from None
