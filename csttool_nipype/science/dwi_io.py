"""Diffusion-weighted series in memory (:class:`DWIData`) and on disk: reading and writing.

A series is a 4D NIfTI with FSL ``.bval``/``.bvec`` files and optionally a BIDS JSON
sidecar. The import stage that checks and cleans a series up is
:mod:`csttool_nipype.science.dwi_import`.

Frames (see :mod:`csttool_nipype.science.gradients`): ``.bvec`` files hold
b-vectors in the FSL frame; :class:`DWIData` holds them in the image's voxel
axes (``bvecs_voxel``), which is what dipy expects for ``data[i, j, k]``.

Every problem with the input is raised as a one-line
:class:`~csttool_nipype.errors.InputError` naming the file at fault.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from csttool_nipype.errors import InputError
from csttool_nipype.science import gradients
from csttool_nipype.jsonutil import jsonable

logger = logging.getLogger(__name__)

#: A path argument: a string or an ``os.PathLike``.
DWIPath = str | PathLike


@dataclass
class DWIData:
    """A diffusion-weighted series in memory.

    Attributes
    ----------
    data : ndarray, shape (X, Y, Z, N), float32
        Signal intensities, one 3D volume per diffusion measurement.
    affine : ndarray, shape (4, 4)
        Voxel indices to world (scanner RAS+) millimetres.
    bvals : ndarray, shape (N,)
        b-values in s/mm².
    bvecs_voxel : ndarray, shape (N, 3)
        Unit gradient directions in the image's voxel axes (i, j, k); rows of
        b=0 volumes (b ≤ threshold) are zero once validated.
    metadata : dict
        JSON sidecar contents (BIDS keys as written by dcm2niix; may be empty), plus
        ``metadata["csttool_import"]`` after :func:`import_dwi`.
    source : str
        The input path, used in error messages.
    """

    data: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray
    bvecs_voxel: np.ndarray
    metadata: dict = field(default_factory=dict)
    source: str = ""

    @property
    def n_volumes(self) -> int:
        """Number of volumes (last axis of ``data``; 1 for a 3D array)."""
        return int(self.data.shape[3]) if self.data.ndim >= 4 else 1

    @property
    def bvecs_world(self) -> np.ndarray:
        """b-vectors in world (RAS+) axes, shape (N, 3)."""
        return gradients.voxel_to_world(self.bvecs_voxel, self.affine)


# --------------------------------------------------------------------------- reading


def _strip_nifti_suffix(path: Path) -> Path:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)])
    return path.with_name(path.stem) if path.suffix else path


def find_sidecars(nifti: DWIPath) -> tuple[Path | None, Path | None, Path | None]:
    """Find the ``.bval``, ``.bvec`` and ``.json`` files sharing a NIfTI's stem.

    Parameters
    ----------
    nifti : path-like
        ``name.nii.gz`` or ``name.nii``; the sidecars looked for are
        ``name.bval`` (or ``name.bvals``), ``name.bvec`` (or ``name.bvecs``) and
        ``name.json`` in the same folder.

    Returns
    -------
    bval, bvec, json : Path or None
        Each existing file, or None when absent.
    """
    stem = _strip_nifti_suffix(Path(nifti))

    def first(*exts: str) -> Path | None:
        for ext in exts:
            candidate = stem.with_name(stem.name + ext)
            if candidate.is_file():
                return candidate
        return None

    return first(".bval", ".bvals"), first(".bvec", ".bvecs"), first(".json")


def _read_table(path: Path, kind: str) -> np.ndarray:
    """Read a whitespace/comma separated numeric text table as a 2D float array."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except FileNotFoundError as exc:
        raise InputError(path, f"{kind} file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read {kind} file ({exc})") from exc
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        try:
            rows.append([float(tok) for tok in line.split()])
        except ValueError as exc:
            raise InputError(path, f"not a {kind} file: line {lineno} is not numeric ({line[:40]!r})") from exc
    if not rows:
        raise InputError(path, f"{kind} file is empty")
    if len({len(r) for r in rows}) != 1:
        raise InputError(path, f"{kind} file has rows of different lengths ({sorted({len(r) for r in rows})})")
    return np.asarray(rows, dtype=float)


def _read_bvals(path: Path) -> np.ndarray:
    """b-values (s/mm²) from an FSL ``.bval`` file: one row or one column."""
    table = _read_table(path, "b-value")
    if table.shape[0] != 1 and table.shape[1] != 1:
        raise InputError(path, f"b-value file must be one row or one column, got {table.shape[0]}×{table.shape[1]}")
    return table.ravel()


def _read_bvecs(path: Path) -> np.ndarray:
    """b-vectors (FSL frame) from a ``.bvec`` file, returned as (N, 3).

    The FSL layout is 3 rows (x, y, z components) × N columns; an N×3 layout (one
    vector per row) is accepted too. A 3×3 file is ambiguous and read the FSL way.
    """
    table = _read_table(path, "b-vector")
    if table.shape[0] == 3:
        return table.T.copy()
    if table.shape[1] == 3:
        logger.info("%s: b-vectors stored as N×3 (one vector per row), reading them so", path)
        return table
    raise InputError(path, f"b-vector file must be 3×N or N×3, got {table.shape[0]}×{table.shape[1]}")


def _read_sidecar(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(path, "JSON sidecar not found") from exc
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a valid JSON sidecar ({exc})") from exc
    if not isinstance(meta, dict):
        raise InputError(path, "JSON sidecar must hold an object ({...})")
    return meta


def _read_image(nifti: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxel data (float32) and affine of an image file; any read failure is an InputError."""
    if not nifti.is_file():
        raise InputError(nifti, "image file not found")
    try:
        img = nib.load(str(nifti))
    except Exception as exc:  # nibabel raises many types for a malformed header
        raise InputError(nifti, f"cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
    except (EOFError, OSError, zlib.error, ValueError, MemoryError) as exc:
        raise InputError(nifti, f"cannot read the image data, file truncated or corrupt? ({type(exc).__name__}: {exc})") from exc
    return data, np.asarray(img.affine, dtype=float)


def read_dwi(
    nifti: DWIPath,
    bval: DWIPath | None = None,
    bvec: DWIPath | None = None,
    sidecar: DWIPath | None = None,
    source: str | None = None,
) -> DWIData:
    """Read image, b-values, b-vectors and sidecar without validating them (see :func:`load_dwi`)."""
    nifti = Path(nifti)
    if not nifti.is_file():
        raise InputError(nifti, "image file not found" if not nifti.exists() else "not a file")
    found_bval, found_bvec, found_json = find_sidecars(nifti)
    if bval is None:
        if found_bval is None:
            raise InputError(nifti, f"no b-value file found next to it (expected {_strip_nifti_suffix(nifti).name}.bval)")
        bval = found_bval
    if bvec is None:
        if found_bvec is None:
            raise InputError(nifti, f"no b-vector file found next to it (expected {_strip_nifti_suffix(nifti).name}.bvec)")
        bvec = found_bvec
    if sidecar is None:
        sidecar = found_json

    data, affine = _read_image(nifti)
    bvals = _read_bvals(Path(bval))
    bvecs_fsl = _read_bvecs(Path(bvec))
    metadata = _read_sidecar(Path(sidecar)) if sidecar is not None else {}
    bvecs_voxel = gradients.fsl_to_voxel(bvecs_fsl, affine) if np.all(np.isfinite(affine)) else bvecs_fsl
    logger.debug("read %s: shape %s, %d b-values, %d b-vectors", nifti, data.shape, bvals.size, len(bvecs_fsl))
    return DWIData(data=data, affine=affine, bvals=bvals, bvecs_voxel=bvecs_voxel, metadata=metadata,
                   source=str(nifti) if source is None else source)


# --------------------------------------------------------------------------- writing


def _fmt_number(x: float) -> str:
    return np.format_float_positional(float(x), precision=8, unique=True, trim="-")


def save_dwi(dwi: DWIData, out_prefix: DWIPath, compress: bool = True) -> dict[str, Path]:
    """Write a series as NIfTI + FSL ``.bval``/``.bvec`` + JSON.

    Parameters
    ----------
    dwi : DWIData
        The series (b-vectors in voxel axes).
    out_prefix : path-like
        Output path without extension (a trailing ``.nii``/``.nii.gz`` is ignored);
        missing parent folders are created.
    compress : bool
        ``.nii.gz`` (default) or uncompressed ``.nii``. gzip costs ~5 s per write of a
        130 MB clinical series, so intermediate files inside a workflow are uncompressed.

    Returns
    -------
    dict
        ``{"nifti": prefix.nii[.gz], "bval": prefix.bval, "bvec": prefix.bvec,
        "json": prefix.json}``. The image is float32 with scanner-coded
        qform/sform; b-values in s/mm² on one line; b-vectors in the FSL frame
        (:func:`gradients.voxel_to_fsl`), 3 rows; JSON is ``dwi.metadata``.
    """
    prefix = _strip_nifti_suffix(Path(out_prefix)) if str(out_prefix).lower().endswith((".nii", ".nii.gz")) \
        else Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = {
        "nifti": prefix.with_name(prefix.name + (".nii.gz" if compress else ".nii")),
        "bval": prefix.with_name(prefix.name + ".bval"),
        "bvec": prefix.with_name(prefix.name + ".bvec"),
        "json": prefix.with_name(prefix.name + ".json"),
    }
    affine = np.asarray(dwi.affine, float)
    img = nib.Nifti1Image(np.asarray(dwi.data, dtype=np.float32), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(paths["nifti"]))

    paths["bval"].write_text(" ".join(_fmt_number(b) for b in np.asarray(dwi.bvals)) + "\n")
    fsl = gradients.voxel_to_fsl(np.asarray(dwi.bvecs_voxel, float), affine)
    fsl = np.where(fsl == 0, 0.0, fsl)  # no "-0"
    paths["bvec"].write_text("".join(" ".join(_fmt_number(v) for v in row) + "\n" for row in fsl.T))
    paths["json"].write_text(json.dumps(jsonable(dwi.metadata), indent=2) + "\n")
    logger.info("wrote %s (+ .bval/.bvec/.json)", paths["nifti"])
    return paths
