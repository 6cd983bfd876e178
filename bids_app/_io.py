"""Atomic file writes and safe paths: no half-written file ever appears under its final name.

Every writer in the app goes through these helpers: data are written to a temporary file in the
destination directory, flushed and fsync'ed, then renamed over the final name (``os.replace`` is
atomic on POSIX within one file system). Several jobs writing the same file therefore leave one
complete version, never a mix.

Temporary names carry the host and process id (``.<final>.<host>.<pid>.<random>.part<ext>``), so
:func:`remove_stale_partials` deletes only what a dead job left: two jobs working on the same files
never delete each other's in-flight files.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import OutputError

__all__ = [
    "atomic_path",
    "write_bytes",
    "write_text",
    "write_json",
    "safe_join",
    "safe_mkdir",
    "remove_stale_partials",
    "sha256_file",
    "tsv_bool",
]

#: a ``.part`` file of another host is taken for stale only after this long (no way to ask its pid)
FOREIGN_PARTIAL_AGE_S = 24 * 3600.0


def _host() -> str:
    return "".join(c for c in socket.gethostname().split(".")[0] if c.isalnum() or c == "-") or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success rename it to ``final``.

    ``suffix`` keeps extensions that writers look at (e.g. ``.nii.gz`` for nibabel). On error the
    temporary file is removed and ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.{_host()}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=f".part{suffix}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(final: Path, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_text(final: Path, text: str) -> Path:
    return write_bytes(final, text.encode("utf-8"))


def write_json(final: Path, obj: Any) -> Path:
    return write_text(final, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def safe_join(root: Path, *parts: str | os.PathLike[str]) -> Path:
    """Join ``parts`` below ``root`` and refuse any result that escapes ``root``.

    Paths built from input data (labels, file names) go through this, so a label such as
    ``../../etc`` or a symlink planted inside ``root`` can never make the app write outside it.
    Raises :class:`~bids_app.errors.OutputError` (exit code 73).
    """
    root = Path(root).resolve()
    joined = root.joinpath(*[str(p) for p in parts])
    candidate = joined.resolve()
    if candidate != root and root not in candidate.parents:
        raise OutputError(
            f"{joined} leads to {candidate}, outside {root} (a symlink or '..' in the path); "
            "remove it, outputs are written only inside their directory"
        )
    return candidate


def safe_mkdir(root: Path, *parts: str | os.PathLike[str]) -> Path:
    """Create ``root/parts...`` (and parents) and check, after creating it, that it still lies in ``root``.

    Checking after ``mkdir`` closes the gap a symlink planted between the check and the creation
    would open. Raises :class:`~bids_app.errors.OutputError`.
    """
    path = safe_join(root, *parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {path}: {exc.strerror or exc}") from exc
    return safe_join(root, path.relative_to(Path(root).resolve()))


def remove_stale_partials(folder: Path, names: Iterator[str] | list[str] | tuple[str, ...] = ()) -> list[Path]:
    """Delete ``.part`` files that dead jobs left in ``folder`` (for ``names`` only, or all when empty).

    A file is stale when its job ran on this host and its pid is gone, or when it was made on
    another host more than :data:`FOREIGN_PARTIAL_AGE_S` ago. Files of live jobs are kept.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    names = tuple(names)
    patterns = [f".{n}.*.part*" for n in names] if names else [".*.part*"]
    host = _host()
    for pattern in patterns:
        for path in folder.glob(pattern):
            rest = path.name[1:].split(".part", 1)[0].split(".")
            try:  # <final...>.<host>.<pid>.<random>
                pid, owner = int(rest[-2]), rest[-3]
            except (IndexError, ValueError):
                pid, owner = -1, ""  # an old-style name: no owner recorded
            try:
                if owner == host and pid > 0:
                    stale = not _pid_alive(pid)
                else:
                    stale = time.time() - path.lstat().st_mtime > FOREIGN_PARTIAL_AGE_S or pid == -1
                if stale:
                    path.unlink(missing_ok=True)
                    removed.append(path)
            except OSError:
                continue
    return removed


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def tsv_bool(value: Any) -> bool:
    """A boolean cell of a table the app wrote: True only for a recorded True.

    pandas reads the app's ``True`` / ``False`` cells as bools, strings or numpy bools depending on
    the other cells of the column; ``n/a``, empty cells and anything else count as not True.
    """
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return str(value).strip().lower() == "true"
