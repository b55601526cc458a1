"""PneumoniaMNIST (MedMNIST v2/v3): pediatric chest X-rays, normal (0) vs pneumonia (1).

Yang et al., "MedMNIST v2", Scientific Data 2023. The ``.npz`` file is located, validated and
fingerprinted here; medmnist is only used for its default root, its official MD5s and its
download. The file is found, in this order (explicit arguments beat environment variables):
``data_file``; ``<data_root>/<name>``; env ``BENCH_DATA_FILE``; ``<BENCH_DATA_ROOT>/<name>``;
``<medmnist's default root>/<name>`` (``~/.medmnist``), where ``<name>`` is
``pneumoniamnist.npz`` (size 28) or ``pneumoniamnist_{size}.npz``.

The machinery here is generic in the medmnist flag (:func:`load_medmnist`): ``datasets.medmnist2d``
registers the other single-label 2D MedMNIST datasets through it, with the same resolution order
except that env ``BENCH_DATA_FILE`` names the PneumoniaMNIST file only (a file of one data set
must never be read silently as another).
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.core.errors import BenchError, one_line
from bench.core.io import file_md5
from datasets.base import SPLITS, ImageSplit, register_dataset

FLAG = "pneumoniamnist"
SIZES = (28, 64, 128, 224)
CLASS_NAMES = ("normal", "pneumonia")
ENV_FILE = "BENCH_DATA_FILE"
ENV_ROOT = "BENCH_DATA_ROOT"
_ROOT_ORIGINS = ("data_root", ENV_ROOT, "medmnist default root")  # only these may download
_FIX_SOURCE = f"pass --data-file / set {ENV_FILE} to a valid file"


def file_name(size: int, flag: str = FLAG) -> str:
    """medmnist's file name: ``pneumoniamnist.npz`` for 28, ``pneumoniamnist_{size}.npz`` otherwise."""
    return f"{flag}{_size_flag(size)}.npz"


def default_data_root() -> Path:
    """medmnist's default root, ``medmnist.info.DEFAULT_ROOT`` (``~/.medmnist``)."""
    from medmnist.info import DEFAULT_ROOT

    # medmnist sets DEFAULT_ROOT to None when it cannot create ~/.medmnist
    return Path(DEFAULT_ROOT) if DEFAULT_ROOT else Path.home() / ".medmnist"


def official_md5(size: int, flag: str = FLAG) -> str:
    """The MD5 of the official file of this size, from ``medmnist.INFO`` (``MD5``, ``MD5_64``, ...)."""
    return _info(flag)[f"MD5{_size_flag(size)}"]


def resolve_data_file(
    size: int = 28, data_file: str | Path | None = None, data_root: str | Path | None = None, flag: str = FLAG
) -> Path:
    """The path the loader would read (which may not exist yet); no loading, no download."""
    return _resolve(_check_size(size, flag), data_file, data_root, flag)[0]


def num_channels(flag: str) -> int:
    """Image channels of a MedMNIST flag (``INFO[flag]["n_channels"]``: 1 grayscale, 3 RGB)."""
    return int(_info(flag)["n_channels"])


def class_names(flag: str) -> tuple[str, ...]:
    """Class names of a MedMNIST flag in label order (``INFO[flag]["label"]``)."""
    labels = _info(flag)["label"]
    return CLASS_NAMES if flag == FLAG else tuple(str(labels[str(k)]) for k in range(len(labels)))


@register_dataset(FLAG, sizes=SIZES, in_channels=1, num_classes=2, has_masks=False, constraints={"size": SIZES})
def pneumoniamnist(
    split: str,
    *,
    size: int = 28,
    data_file: str | Path | None = None,
    data_root: str | Path | None = None,
    download: bool = True,
) -> ImageSplit:
    """One split of PneumoniaMNIST at ``size`` x ``size``.

    Returns images ``(N, 1, size, size)`` float32 = uint8 / 255, labels ``(N,)`` int64 in {0, 1},
    no masks; ``info`` holds the source path, its MD5 and whether that MD5 is the official one.
    A file missing under a medmnist root is downloaded by medmnist when ``download`` is true.
    """
    return load_medmnist(FLAG, split, size=size, data_file=data_file, data_root=data_root, download=download)


def load_medmnist(
    flag: str,
    split: str,
    *,
    size: int = 28,
    data_file: str | Path | None = None,
    data_root: str | Path | None = None,
    download: bool = True,
) -> ImageSplit:
    """One split of the single-label 2D MedMNIST data set ``flag`` (a key of ``medmnist.INFO``).

    Returns images ``(N, C, size, size)`` float32 = uint8 / 255 with C = ``INFO[flag]["n_channels"]``
    (a file's RGB ``(N, H, W, 3)`` becomes channels first), labels ``(N,)`` int64 in
    ``{0, ..., K-1}`` with K = ``len(INFO[flag]["label"])``, no masks, and the provenance ``info``.
    """
    if split not in SPLITS:
        raise BenchError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    size = _check_size(size, flag)
    path, origin = _resolve(size, data_file, data_root, flag)
    if not path.exists() and origin in _ROOT_ORIGINS and download:
        _download(path, size, split, flag)
    key = _file_key(path, origin, size, flag)
    try:
        arrays = _read_npz(*key, size, flag)
    except _BadFile as err:
        raise _bad_file_error(err, path, origin, size, flag) from err
    md5 = _md5(*key)
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    official = official_md5(size, flag)
    tensor = torch.from_numpy(images)
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()
    return ImageSplit(
        images=tensor.float().div_(255.0),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name=flag,
        split=split,
        masks=None,
        class_names=class_names(flag),
        info={
            "source": os.path.abspath(path),
            "source_from": origin,
            "md5": md5,
            "md5_official": md5 == official,
            "official_md5": official,
            "size": size,
            "n": int(labels.shape[0]),
        },
    )


def _size_flag(size: int) -> str:
    return "" if size == 28 else f"_{size}"


def _info(flag: str = FLAG) -> dict[str, Any]:
    from medmnist.info import INFO

    return INFO[flag]


def _check_size(size: Any, flag: str = FLAG) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) not in SIZES:
        raise BenchError(f"{flag} size must be one of {', '.join(map(str, SIZES))}, got {size!r}")
    return int(size)


def _resolve(
    size: int, data_file: str | Path | None, data_root: str | Path | None, flag: str = FLAG
) -> tuple[Path, str]:
    """(path, where it came from) following the documented order."""
    # explicit arguments (command-line flags) beat environment variables, which beat the default
    if data_file is not None and str(data_file) != "":
        return Path(data_file).expanduser(), "data_file"
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser() / file_name(size, flag), "data_root"
    if flag == FLAG and os.environ.get(ENV_FILE):  # the variable names PneumoniaMNIST's file only
        return Path(os.environ[ENV_FILE]).expanduser(), ENV_FILE
    if os.environ.get(ENV_ROOT):
        root, origin = Path(os.environ[ENV_ROOT]).expanduser(), ENV_ROOT
    else:
        root, origin = default_data_root(), "medmnist default root"
    return root / file_name(size, flag), origin


def _fix_source(flag: str) -> str:
    return _FIX_SOURCE if flag == FLAG else "pass --data-file to a valid file"


def _missing_fix(path: Path, size: int, flag: str = FLAG) -> str:
    info = _info(flag)
    suffix = _size_flag(size)
    return (
        f"put {path.name} (from {info['url' + suffix]}, MD5 {info['MD5' + suffix]}) in {path.parent} "
        f"or {_fix_source(flag)}"
    )


def _download(path: Path, size: int, split: str, flag: str = FLAG) -> None:
    """Download with medmnist into a temporary directory beside ``path``, then rename it into place,
    so an interrupted download never leaves a truncated file under the expected name."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".download", dir=path.parent))
    except OSError as exc:
        raise BenchError(
            f"{path} not found and cannot create {path.parent} for the download "
            f"({exc.strerror or exc}); {_missing_fix(path, size, flag)}"
        ) from exc
    try:
        import medmnist

        dataset_class = getattr(medmnist, _info(flag)["python_class"])  # medmnist.PneumoniaMNIST, ...
        dataset_class(split=split, size=size, root=str(tmp), download=True, mmap_mode="r")
        os.replace(tmp / path.name, path)
    except Exception as exc:
        # medmnist wraps every failure in a multi-line RuntimeError; report the root cause
        cause = exc.__context__ or exc.__cause__ or exc
        reason = one_line(f"{type(cause).__name__}: {cause}", 200)
        raise BenchError(
            f"{path} not found and the automatic download failed ({reason}); {_missing_fix(path, size, flag)}"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _file_key(path: Path, origin: str, size: int, flag: str = FLAG) -> tuple[str, int, int, int]:
    """(resolved path, mtime_ns, bytes, inode): a cache key that changes when the file is replaced."""
    try:
        st = path.stat()
    except FileNotFoundError:
        where = f" ({origin})" if origin in (ENV_FILE, ENV_ROOT) else ""
        if origin in _ROOT_ORIGINS:
            raise BenchError(
                f"{path}{where} not found and download is disabled; allow the download or "
                f"{_missing_fix(path, size, flag)}"
            ) from None
        raise BenchError(f"data file {path}{where} not found; fix the path or {_fix_source(flag)}") from None
    except OSError as exc:
        raise BenchError(
            f"cannot read {path}: {exc.strerror or exc}; fix its permissions or {_fix_source(flag)}"
        ) from exc
    if not path.is_file():
        raise BenchError(f"{path} is not a file; {_fix_source(flag)}")
    return str(path.resolve()), st.st_mtime_ns, st.st_size, st.st_ino


@functools.lru_cache(maxsize=8)
def _md5(path: str, mtime_ns: int, nbytes: int, ino: int) -> str:
    return file_md5(path)


class _BadFile(Exception):
    """A problem with the file's contents; the caller adds the path and the fix."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def _bad_file_error(err: _BadFile, path: Path, origin: str, size: int, flag: str = FLAG) -> BenchError:
    if err.fix:
        fix = err.fix
    elif origin in _ROOT_ORIGINS:
        fix = f"delete it and load again with download enabled, or {_missing_fix(path, size, flag)}"
    else:
        fix = f"replace it with a valid copy of the official {file_name(size, flag)} or {_fix_source(flag)}"
    where = f" ({origin})" if origin in (ENV_FILE, ENV_ROOT) else ""
    return BenchError(f"{path}{where}: {err.problem}; {fix}")


MAX_RATIO = 1100  # deflate expands at most ~1032:1; a member claiming more is forged (a zip bomb)


def _check_sizes(npz: Any, file_size: int) -> None:
    """Each array's header against the archive: the bytes its shape needs must be in its member,
    and the member no larger than its compressed bytes can expand to (so memory stays within
    ~1000x the file's size, whatever the headers claim)."""
    for info in npz.zip.infolist():
        name = info.filename.removesuffix(".npy")
        if info.compress_size > file_size or info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise _BadFile(
                f"{name} claims {info.file_size} bytes from {info.compress_size} compressed bytes in a "
                f"{file_size}-byte file; the archive is damaged or forged"
            )
        try:
            with npz.zip.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(fh)
                header = fh.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise _BadFile(
                f"cannot read the header of {name!r}, the archive is truncated or corrupt ({type(exc).__name__}: {exc})"
            ) from exc
        need = math.prod(shape) * dtype.itemsize
        if need > info.file_size - header:
            raise _BadFile(
                f"{name} claims shape {tuple(shape)} ({need} bytes of {dtype}) but holds only "
                f"{info.file_size - header} bytes; the archive is damaged or forged"
            )


@functools.lru_cache(maxsize=2)
def _read_npz(path: str, mtime_ns: int, nbytes: int, ino: int, size: int, flag: str = FLAG) -> dict[str, np.ndarray]:
    """All six arrays of a MedMNIST file of ``flag``, validated against its channels and classes;
    the file is read once per (file, size, flag)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise _BadFile(
            f"cannot read the file ({exc.strerror or exc})", fix=f"fix its permissions or {_fix_source(flag)}"
        ) from exc
    if head.startswith(b"\x93NUMPY"):
        raise _BadFile("holds a single .npy array, not an .npz archive of six arrays")
    if not head.startswith(b"PK"):
        raise _BadFile(
            "empty file, not an .npz archive" if not head else f"not an .npz (zip) archive, it starts with {head!r}"
        )
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _BadFile(f"truncated or corrupt .npz archive ({type(exc).__name__}: {exc})") from exc
    with npz:
        wanted = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
        missing = [k for k in wanted if k not in npz.files]
        if missing:
            raise _BadFile(
                f"missing keys {', '.join(missing)} (has {', '.join(npz.files) or 'none'}), not a MedMNIST file"
            )
        _check_sizes(npz, os.path.getsize(path))  # before numpy allocates what a header claims
        arrays = {}
        for key in wanted:
            try:
                arrays[key] = npz[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise _BadFile(
                    f"cannot read array {key!r}, the archive is truncated or corrupt ({type(exc).__name__}: {exc})"
                ) from exc
    rgb, k = num_channels(flag) == 3, len(_info(flag)["label"])
    allowed = "{0, 1}" if k == 2 else f"{{0, ..., {k - 1}}}"
    for s in SPLITS:
        images, labels = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        if images.dtype != np.uint8:
            raise _BadFile(f"{s}_images has dtype {images.dtype}, expected uint8")
        if rgb and (images.ndim != 4 or images.shape[3] != 3):
            raise _BadFile(f"{s}_images has shape {images.shape}, expected RGB (N, {size}, {size}, 3) for {flag}")
        if not rgb and images.ndim != 3:
            raise _BadFile(f"{s}_images has shape {images.shape}, expected grayscale (N, {size}, {size})")
        if images.shape[1:3] != (size, size):
            raise _BadFile(
                f"{s}_images are {images.shape[1]}x{images.shape[2]} but size={size} was requested",
                fix=f"request the file's size or point to a {file_name(size, flag)} file",
            )
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise _BadFile(f"{s}_labels has shape {labels.shape}, expected (N, 1) or (N,)")
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
            raise _BadFile(f"{s}_labels has dtype {labels.dtype}, expected integers")
        if labels.shape[0] != images.shape[0]:
            raise _BadFile(f"{s}_images has {images.shape[0]} samples but {s}_labels has {labels.shape[0]}")
        bad = np.setdiff1d(np.unique(labels), np.arange(k))
        if bad.size:
            raise _BadFile(
                f"{s}_labels has values {bad[:5].tolist()} outside {allowed}"
                + ("" if flag == FLAG else f" ({flag} has {k} classes)"),
                fix=None
                if flag == FLAG
                else f"use a {flag} file (labels 0..{k - 1}) or the dataset this file belongs to",
            )
        arrays[f"{s}_labels"] = labels
    return arrays
