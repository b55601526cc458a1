"""File helpers: atomic writes, safe reads, checks of a results tree, content hashes.

Every file pneumobench writes goes through :func:`atomic_write_bytes`: the data goes to a
temporary file in the same directory, is flushed and fsynced, then renamed over the target, so
a killed run never leaves a half-written file and never damages an earlier result. A place that
cannot be written (a read-only folder, a file where a folder belongs, a full disk) is a one-line
:class:`~bench.core.errors.BenchError` (:func:`os_error`), never a traceback.

Inside a results tree nothing follows a symbolic link or opens a non-regular file (a FIFO would
block a reader forever): :func:`check_tree` refuses them before a run starts, and
:func:`read_regular` reads a file without following a link and only if it is a regular file.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import inspect
import io
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from bench.core.errors import BenchError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename); a place that cannot be
    written is a one-line :class:`BenchError` (:func:`os_error`) and leaves nothing behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise os_error(exc, path) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # replaces a link at ``path`` itself: never writes through it
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise os_error(exc, path) from None
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
        module = inspect.getmodule(obj)
        if module is not None:
            return hashlib.sha256(inspect.getsource(module).encode()).hexdigest()[:16]
    except (OSError, TypeError):  # no source (compiled plug-in)
        pass
    # no module or no source: fall back to its name
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"


# ----------------------------------------------------------------------------- places that cannot be used


def os_error(exc: OSError, path: str | os.PathLike | None = None, doing: str = "write") -> BenchError:
    """The one-line error of an :class:`OSError` met while doing ``doing`` ("write" or "read") at
    ``path`` (default: the error's own file name), with the fix that applies to its cause."""
    where = Path(path if path is not None else exc.filename if exc.filename is not None else "?")
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BenchError(
            f"cannot {doing} {where} ({reason}): free some space and re-run; finished work is kept and "
            f"the re-run resumes"
        )
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = _blocking_file(where)
        if blocker is not None:
            return BenchError(FILE_FOR_FOLDER.format(blocker))
    if exc.errno == errno.EISDIR:
        return BenchError(FOLDER_FOR_FILE.format(where))
    if exc.errno == errno.ELOOP:
        return BenchError(LINK.format(where))
    if exc.errno == errno.ENAMETOOLONG:
        return BenchError(f"cannot {doing} {where} ({reason}); choose a shorter name or folder")
    fix = {"write": "make the folder writable or choose another place", "read": "make it readable"}.get(
        doing, "check its permissions and the free space"
    )
    return BenchError(f"cannot {doing} {where} ({reason}); {fix}")


LINK = "{} is a symbolic link; pneumobench never follows a link inside its results: remove it"
FOLDER_FOR_FILE = "{} is a folder where a file belongs; remove it"
FILE_FOR_FOLDER = "{} is a file where a folder belongs; remove it or choose another folder"
SPECIAL = "{} is a {}, not a regular file; remove it"


def _blocking_file(path: Path) -> Path | None:
    """The nearest of ``path`` and its parents that exists and is not a folder, if any."""
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p if os.path.islink(p) or not os.path.isdir(p) else None
    return None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def check_entry(path: str | os.PathLike, *, folder: bool | None = None) -> None:
    """Refuse (one line) ``path`` if it is a symbolic link or a non-regular file, or (``folder``
    True / False) not a folder / a folder. A missing path passes."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_error(exc, path, "read") from None
    if stat.S_ISLNK(mode):
        raise BenchError(LINK.format(path))
    if stat.S_ISDIR(mode):
        if folder is False:
            raise BenchError(FOLDER_FOR_FILE.format(path))
    elif not stat.S_ISREG(mode):
        raise BenchError(SPECIAL.format(path, _kind(mode)))
    elif folder is True:
        raise BenchError(FILE_FOR_FOLDER.format(path))


def check_tree(root: str | os.PathLike, *, folders: Iterable[str] = (), files: Iterable[str] = ()) -> None:
    """Refuse (one line, naming the entry) a tree that holds a symbolic link or a non-regular file
    anywhere, a file at one of ``folders`` or a folder at a path matching one of the ``files``
    patterns (both relative to ``root``, ``fnmatch`` style). ``root`` must be a folder or absent.
    Reads names only, never a file's contents."""
    root = Path(root)
    folders, files = set(folders), tuple(files)
    check_entry(root, folder=True)
    pending = [root] if root.exists() else []
    while pending:
        here = pending.pop()
        try:
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise os_error(exc, here, "read") from None
        for e in entries:
            path = Path(e.path)
            rel = path.relative_to(root).as_posix()
            must = True if rel in folders else False if any(fnmatch.fnmatchcase(rel, f) for f in files) else None
            check_entry(path, folder=must)
            if e.is_dir(follow_symlinks=False):
                pending.append(path)


def read_regular(path: str | os.PathLike, *, follow: bool = False) -> bytes:
    """The bytes of ``path`` if it is a regular file, read without following a link at ``path``
    (``follow`` allows one) and without blocking on a FIFO; anything else is a one-line
    :class:`BenchError`. A missing file raises :class:`FileNotFoundError`."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise os_error(exc, path, "read") from None
    try:
        check_regular(fd, path)
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise os_error(exc, path, "read") from None
    finally:
        os.close(fd)


def check_regular(fd: int, path: str | os.PathLike) -> None:
    """Refuse (one line) an open descriptor that is not of a regular file (``path`` names it)."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        raise BenchError(FOLDER_FOR_FILE.format(path))
    if not stat.S_ISREG(mode):
        raise BenchError(SPECIAL.format(path, _kind(mode)))


def ensure_folder(path: str | os.PathLike, *, what: str = "", follow: bool = False, probe: bool = False) -> Path:
    """Make ``path`` a folder (and its parents) or refuse in one line (prefixed ``what: ``): a link
    at ``path`` (unless ``follow``), a file in the way, a place that cannot be written. ``probe``
    also creates and removes a file in it, so a read-only folder is found before any work."""
    path = Path(path)
    try:
        if not follow:
            check_entry(path, folder=True)
        path.mkdir(parents=True, exist_ok=True)
        if probe:
            fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=path)
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        raise BenchError(f"{what + ': ' if what else ''}{os_error(exc, path)}") from None
    except BenchError as exc:
        raise BenchError(f"{what + ': ' if what else ''}{exc}") from None
    return path
