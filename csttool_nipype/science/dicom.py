"""DICOM to NIfTI conversion with dcm2niix, for the import stage.

:func:`convert_dicom` turns a DICOM folder (any depth) or a single DICOM file,
optionally gzipped, into one 4D diffusion NIfTI with its FSL ``.bval``/``.bvec``
and BIDS JSON sidecar, as written by ``dcm2niix``. The b-vectors are in the FSL
frame (see :mod:`csttool_nipype.science.gradients`); reading is
:mod:`csttool_nipype.science.dwi_io`'s job, validation and reorientation
:mod:`csttool_nipype.science.dwi_import`'s.

Everything is written inside ``work_dir``:

* ``csttool_dicom_input/``: gunzipped copies of ``*.gz`` inputs (plus symlinks to
  the plain files beside them), only when decompression or staging is needed;
* ``csttool_dcm2niix/``: dcm2niix's outputs, named ``<SeriesNumber>_<SeriesDescription>``;
* ``dcm2niix.log``: the command line and dcm2niix's console output.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from csttool_nipype.errors import CsttoolError, InputError

logger = logging.getLogger(__name__)

#: dcm2niix output file name pattern (series number and description).
OUTPUT_PATTERN = "%s_%d"
#: Sub-folders and log file created inside ``work_dir``.
STAGING_DIRNAME = "csttool_dicom_input"
OUTPUT_DIRNAME = "csttool_dcm2niix"
LOG_NAME = "dcm2niix.log"
#: Deepest folder level dcm2niix searches (its maximum).
SEARCH_DEPTH = 9
#: Seconds before a dcm2niix run is abandoned.
TIMEOUT_S = 3600

_GZIP_MAGIC = b"\x1f\x8b"
_REMOVED_RE = re.compile(r"(\d+)\s+volumes? appears? to be ADC or trace", re.IGNORECASE)


def find_dcm2niix() -> str:
    """Locate the ``dcm2niix`` executable.

    Looks on ``PATH`` first, then for the binary shipped inside the ``dcm2niix``
    Python wheel (which is a project dependency), so conversion also works when the
    virtual environment's ``bin`` folder is not on ``PATH``.

    Returns
    -------
    str
        Path of the executable.

    Raises
    ------
    CsttoolError
        If neither is found.
    """
    found = shutil.which("dcm2niix")
    if found:
        return found
    try:
        import dcm2niix as _pkg  # the PyPI wheel: a thin wrapper around the binary

        candidate = Path(getattr(_pkg, "bin_path", Path(_pkg.__file__).resolve().parent / "dcm2niix"))
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    raise CsttoolError("dcm2niix not found: install the 'dcm2niix' Python package or put dcm2niix on PATH")


@dataclass(frozen=True)
class _Series:
    """One NIfTI written by dcm2niix and what its sidecar says about it."""

    nifti: Path
    bval: Path | None
    bvec: Path | None
    json: Path | None
    number: str
    description: str

    @property
    def is_diffusion(self) -> bool:
        return self.bval is not None and self.bvec is not None

    def label(self) -> str:
        return f"{self.number} '{self.description}' ({self.nifti.name})"


def _is_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == _GZIP_MAGIC
    except OSError:
        return False


def _gunzip(src: Path, dst: Path) -> None:
    """Decompress ``src`` to ``dst``; a corrupt archive is an :class:`InputError` naming ``src``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, length=1 << 20)
    except (OSError, EOFError, zlib.error) as exc:
        dst.unlink(missing_ok=True)
        raise InputError(src, f"cannot decompress gzipped file ({exc})") from exc


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def _stage_input(path: Path, work_dir: Path) -> Path:
    """Return the folder to hand to dcm2niix, decompressing ``*.gz`` files if needed.

    A plain folder is used in place. A single file, or a folder holding gzipped
    files, is staged into ``work_dir/csttool_dicom_input`` (gunzipped copies,
    symlinks to the other files, relative layout kept).
    """
    if path.is_file():
        files = [path]
        root = path.parent
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file())
        root = path
        if not files:
            raise InputError(path, "folder is empty: no DICOM files to convert")
        if not any(p.suffix.lower() == ".gz" for p in files):
            return path

    staging = work_dir / STAGING_DIRNAME
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    n_gz = 0
    for src in files:
        rel = src.relative_to(root)
        if src.suffix.lower() == ".gz" and _is_gzip(src):
            _gunzip(src, staging / rel.with_suffix(""))
            n_gz += 1
        else:
            _link_or_copy(src, staging / rel)
    logger.info("staged %d file(s) (%d gunzipped) from %s into %s", len(files), n_gz, path, staging)
    return staging


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("could not read dcm2niix sidecar %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _collect_outputs(out_dir: Path) -> list[_Series]:
    series = []
    for nii in sorted(out_dir.glob("*.nii.gz")) + sorted(out_dir.glob("*.nii")):
        stem = nii.name[: -len(".nii.gz")] if nii.name.endswith(".nii.gz") else nii.stem
        side = {ext: out_dir / f"{stem}.{ext}" for ext in ("bval", "bvec", "json")}
        side = {ext: (p if p.is_file() else None) for ext, p in side.items()}
        meta = _read_json(side["json"]) if side["json"] else {}
        series.append(
            _Series(
                nifti=nii,
                bval=side["bval"],
                bvec=side["bvec"],
                json=side["json"],
                number=str(meta.get("SeriesNumber", "?")),
                description=str(meta.get("SeriesDescription", meta.get("ProtocolName", ""))),
            )
        )
    return series


def _matches(s: _Series, series: str | int) -> bool:
    """A number (int or digits) matches SeriesNumber; other text a SeriesDescription substring."""
    wanted = str(series).strip()
    if not wanted:
        return False
    if wanted.isdigit():
        return s.number == str(int(wanted))
    return wanted.lower() in s.description.lower()


def _dcm2niix_hint(log_text: str) -> str:
    """The most telling line of dcm2niix's output, for error messages."""
    for line in log_text.splitlines():
        if line.startswith("Error") or "Unable to" in line:
            return line.strip()
    return ""


def dcm2niix_removed_volumes(log_file: str | PathLike) -> int:
    """Number of derived (ADC/trace) volumes dcm2niix reported removing from a series.

    Parameters
    ----------
    log_file : path-like
        The ``dcm2niix.log`` written by :func:`convert_dicom`.

    Returns
    -------
    int
        0 when the log is missing or mentions no removal.
    """
    try:
        text = Path(log_file).read_text(errors="replace")
    except OSError:
        return 0
    return sum(int(m.group(1)) for m in _REMOVED_RE.finditer(text))


def convert_dicom(
    path: str | PathLike, work_dir: str | PathLike, series: str | int | None = None
) -> tuple[Path, Path, Path, Path]:
    """Convert a DICOM diffusion series to NIfTI + FSL bval/bvec + JSON with dcm2niix.

    Parameters
    ----------
    path : path-like
        A folder of DICOM files (searched to any depth) or a single DICOM file
        (e.g. an enhanced multi-frame DICOM). Gzipped files (``*.gz``, e.g.
        ``*.dcm.gz``) are decompressed into ``work_dir`` first.
    work_dir : path-like
        Folder for decompressed inputs, dcm2niix outputs and ``dcm2niix.log``
        (created if missing; outputs of a previous run there are replaced).
    series : str or int, optional
        Which diffusion series to return when the input holds several: a number
        (int or a string of digits) matches the DICOM SeriesNumber, any other text
        is a case-insensitive substring of the SeriesDescription. Needed only when
        there is more than one.

    Returns
    -------
    nifti, bval, bvec, json : Path
        The 4D diffusion image (``.nii.gz``), its b-values (s/mm²), its b-vectors
        (FSL frame, 3 rows) and its BIDS JSON sidecar. dcm2niix writes
        scanner-derived images it finds (e.g. ``*_ADC.nii.gz``) as separate files
        without b-vectors; those are ignored.

    Raises
    ------
    InputError
        Path missing, empty folder, no DICOM found, dcm2niix produced nothing or no
        diffusion series, several diffusion series and ``series`` not given, or
        ``series`` matching none or several of them.
    CsttoolError
        dcm2niix is not installed or timed out.
    """
    path = Path(path)
    work_dir = Path(work_dir)
    if not path.exists():
        raise InputError(path, "DICOM file or folder not found")
    work_dir.mkdir(parents=True, exist_ok=True)

    out_dir = work_dir / OUTPUT_DIRNAME
    for ours in (work_dir / STAGING_DIRNAME, out_dir):
        if path.resolve() == ours.resolve() or ours.resolve() in path.resolve().parents:
            raise InputError(path, f"lies inside the working folder {ours}, which is replaced on each run; "
                                   "use another work_dir")
    source = _stage_input(path, work_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    log_file = work_dir / LOG_NAME

    exe = find_dcm2niix()
    cmd = [exe, "-z", "y", "-b", "y", "-d", str(SEARCH_DEPTH), "-f", OUTPUT_PATTERN, "-o", str(out_dir), str(source)]
    logger.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                              timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CsttoolError(f"{path}: dcm2niix did not finish within {TIMEOUT_S} s") from exc
    except OSError as exc:
        raise CsttoolError(f"cannot run dcm2niix ({exe}): {exc}") from exc
    log_file.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n[exit code {proc.returncode}]\n")

    outputs = _collect_outputs(out_dir)
    if not outputs:
        if proc.returncode == 2 or "Unable to find any DICOM" in proc.stdout:
            problem = "no DICOM files found"
        else:
            hint = _dcm2niix_hint(proc.stdout)
            problem = f"dcm2niix produced no NIfTI (exit code {proc.returncode}{'; ' + hint if hint else ''})"
        raise InputError(path, f"{problem} (dcm2niix log: {log_file})")
    if proc.returncode != 0:
        logger.warning("dcm2niix exited with code %d for %s; see %s", proc.returncode, path, log_file)
    removed = dcm2niix_removed_volumes(log_file)
    if removed:
        logger.warning("dcm2niix removed %d scanner-derived (ADC/trace) volume(s) from %s", removed, path)

    dwi_series = [s for s in outputs if s.is_diffusion]
    ignored = [s for s in outputs if not s.is_diffusion]
    if ignored:
        logger.info("ignoring non-diffusion output(s): %s", ", ".join(s.nifti.name for s in ignored))
    if not dwi_series:
        listed = "; ".join(s.label() for s in outputs)
        raise InputError(path, f"no diffusion series (no b-values/b-vectors) among the converted series: {listed}")

    if series is not None:
        chosen = [s for s in dwi_series if _matches(s, series)]
        if not chosen:
            listed = "; ".join(s.label() for s in dwi_series)
            raise InputError(path, f"no diffusion series matches --series {series!r}; available: {listed}")
    else:
        chosen = dwi_series
    if len(chosen) > 1:
        listed = "; ".join(s.label() for s in chosen)
        if series is None:
            raise InputError(path, f"found {len(chosen)} diffusion series: {listed}; "
                                   "choose one with --series (series number or description)")
        raise InputError(path, f"--series {series!r} matches {len(chosen)} diffusion outputs: {listed}; "
                               "give a more specific series number or description")

    pick = chosen[0]
    json_path = pick.json
    if json_path is None:  # dcm2niix always writes one with -b y; keep the return type regardless
        json_path = pick.nifti.with_name(pick.nifti.name.split(".nii")[0] + ".json")
        json_path.write_text("{}\n")
    logger.info("diffusion series %s -> %s", pick.label(), pick.nifti)
    return pick.nifti, pick.bval, pick.bvec, json_path
