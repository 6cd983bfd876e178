"""Atomic file writes and safe paths: no half-written file ever appears under its final name.

Every writer in the app goes through these helpers: data are written to a temporary file in the
destination directory, flushed and fsync'ed, then renamed over the final name (``os.replace`` is
atomic on POSIX within one file system). Several jobs writing the same file therefore leave one
complete version, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json", "safe_join", "sha256_file", "tsv_bool"]


@contextlib.contextmanager
def atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success rename it to ``final``.

    ``suffix`` keeps extensions that writers look at (e.g. ``.nii.gz`` for nibabel). On error the
    temporary file is removed and ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".part{suffix}", dir=final.parent)
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
    ``../../etc`` can never make the app write outside the output directory.
    """
    root = Path(root).resolve()
    candidate = root.joinpath(*[str(p) for p in parts]).resolve()
    if candidate != root and root not in candidate.parents:
        raise ValueError(f"path {candidate} escapes the output directory {root}")
    return candidate


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
