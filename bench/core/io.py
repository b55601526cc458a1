"""File helpers: atomic writes and content hashes.

Every file pneumobench writes goes through :func:`atomic_write_bytes`: the data goes to a
temporary file in the same directory, is flushed and fsynced, then renamed over the target, so
a killed run never leaves a half-written file and never damages an earlier result.
"""
from __future__ import annotations

import hashlib
import inspect
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as strict JSON (RFC 8259): NaN and infinities are written as ``null``, never as
    the bare ``NaN`` Python's json module would emit and other JSON readers reject."""
    return atomic_write_text(path, dumps_json(obj) + "\n")


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """Strict, sorted, indented JSON of ``obj`` (non-finite floats -> ``null``; numpy scalars and
    arrays, paths and tensors converted)."""
    kwargs.setdefault("indent", 2)
    return json.dumps(_finite(obj), sort_keys=True, allow_nan=False, **kwargs)


def _finite(o: Any) -> Any:
    """``o`` with every non-finite float replaced by None and containers rebuilt (JSON types)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (np.generic, np.ndarray, torch.Tensor)):
        return _finite(o.tolist())
    if isinstance(o, Path):
        return str(o)
    return o


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` through an in-memory buffer and an atomic rename."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file's bytes (``hashlib.file_digest``: read in chunks, never whole)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def file_md5(path: str | os.PathLike) -> str:
    return file_digest(path, "md5")


def file_sha256(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def json_digest(obj: Any) -> str:
    """SHA-256 (hex) of ``obj`` as sorted-key JSON (``str`` for what JSON cannot hold): a content key."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def source_digest(obj: Any) -> str:
    """Hash of the source of the module defining ``obj``: changed code invalidates what was keyed on it."""
    try:
        return hashlib.sha256(inspect.getsource(inspect.getmodule(obj)).encode()).hexdigest()[:16]
    except (OSError, TypeError):  # no source (compiled plug-in): fall back to its name
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"
