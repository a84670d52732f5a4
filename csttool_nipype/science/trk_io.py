"""TrackVis ``.trk`` input and output of streamlines in world RAS+ mm.

:func:`save_trk` writes the bytes dipy's ``save_tractogram`` writes and :func:`load_trk`
returns the points ``nibabel.streamlines.load`` returns, without their per-streamline
Python loops (whole arrays).
"""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import aff2axcodes
from nibabel.streamlines import ArraySequence

from ..errors import InputError
from .streamlines import packed_points

__all__ = ["reference", "save_trk", "load_trk"]

LOGGER = logging.getLogger(__name__)


def reference(reference_img_or_tuple):
    """dipy reference (affine, dimensions, voxel sizes, voxel order) from an image or tuple."""
    if isinstance(reference_img_or_tuple, nib.spatialimages.SpatialImage):
        affine = np.asarray(reference_img_or_tuple.affine, float)
        shape = reference_img_or_tuple.shape[:3]
        zooms = reference_img_or_tuple.header.get_zooms()[:3]
    else:
        try:
            affine, shape, *rest = reference_img_or_tuple
        except (TypeError, ValueError):
            raise InputError(None, "reference must be an image or an (affine, shape[, zooms]) tuple") from None
        affine = np.asarray(affine, float)
        zooms = rest[0] if rest else np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        shape = tuple(shape)[:3]
    return (
        affine,
        np.asarray(shape, dtype=np.int16),
        np.asarray(zooms, dtype=np.float32),
        "".join(aff2axcodes(affine)),
    )



def _trk_header(ref, n_streamlines: int) -> np.ndarray:
    """The TrackVis header nibabel writes for ``ref`` (dipy space attributes) and a streamline count."""
    import io

    from dipy.io.utils import create_tractogram_header
    from nibabel.streamlines.tractogram import Tractogram
    from nibabel.streamlines.trk import TrkFile, header_2_dtype

    buffer = io.BytesIO()
    TrkFile(Tractogram([], affine_to_rasmm=np.eye(4)), header=create_tractogram_header(TrkFile, *ref)).save(buffer)
    header = np.frombuffer(buffer.getvalue()[:header_2_dtype.itemsize], dtype=header_2_dtype).copy().reshape(())
    if n_streamlines:
        header[nib.streamlines.Field.NB_STREAMLINES] = n_streamlines
    return header


def save_trk(streamlines, reference_img_or_tuple, out_path: str | PathLike) -> Path:
    """Write streamlines given in world RAS+ mm to a TrackVis ``.trk`` file.

    Parameters
    ----------
    streamlines : ArraySequence or sequence of (n_i, 3) arrays
        Points in world RAS+ mm.
    reference_img_or_tuple : nibabel image or tuple
        The image the streamlines belong to, or ``(affine, shape)`` /
        ``(affine, shape, zooms)``; it fills the ``.trk`` header.
    out_path : path-like
        Destination file name (should end in ``.trk``).

    Returns
    -------
    path : Path
        The file written. Points are stored as float32, so a reload matches to about
        1e-5 of their magnitude.

    Notes
    -----
    The file is byte for byte what dipy's ``save_tractogram`` writes for a
    ``StatefulTractogram`` in RAS+ mm after its voxel bounding-box check (which
    sends the points to voxel space with a float32 inverse affine and back), but the
    points are transformed and written as whole arrays instead of one streamline at
    a time.
    """
    from nibabel.affines import apply_affine
    from nibabel.streamlines.trk import get_affine_rasmm_to_trackvis

    out_path = Path(out_path)
    ref = reference(reference_img_or_tuple)
    affine, dimensions = ref[0], ref[1]
    points, counts = packed_points(streamlines)
    header = _trk_header(ref, len(counts))
    if len(counts):
        # dipy's StatefulTractogram.is_bbox_in_vox_valid, in place on the points: to voxel
        # space (float32 inverse affine), to the voxel corner, check, and back.
        inv_affine = np.linalg.inv(affine).astype(np.float32)
        if not np.all(inv_affine == np.eye(4)):
            points = apply_affine(inv_affine, points, inplace=True)
        points += np.asarray([0.5, 0.5, 0.5])
        if np.any(points < 0) or np.any(points > dimensions):  # the bounding box leaves the volume
            LOGGER.warning("%s: some streamline points lie outside the reference volume", out_path)
        if not np.all(affine == np.eye(4)):
            points = apply_affine(affine, points, inplace=True)
        corner = np.eye(4)
        corner[0:3, 0:3] = affine[0:3, 0:3]
        points += -(apply_affine(corner, np.asarray([0.5, 0.5, 0.5])) * [1, 1, 1])
        # nibabel's TrkFile.save: RAS+ mm to TrackVis voxel mm, then float32
        to_trackvis = np.dot(get_affine_rasmm_to_trackvis(header), np.eye(4))
        if not np.allclose(to_trackvis, np.eye(4)):
            points = points @ to_trackvis[:-1, :-1].T + to_trackvis[:-1, -1][None, :]
        record = np.empty(len(counts) + 3 * len(points), dtype="<f4")
        starts = np.arange(len(counts)) + 3 * (np.cumsum(counts) - counts)  # the count before each streamline
        is_count = np.zeros(len(record), dtype=bool)
        is_count[starts] = True
        record[~is_count] = points.astype("<f4").ravel()
        record.view("<i4")[starts] = counts
    else:
        record = np.zeros(0, dtype="<f4")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as f:
        f.write(header.tobytes())
        f.write(record.tobytes())
    return out_path


def load_trk(path: str | PathLike) -> ArraySequence:
    """Read a ``.trk`` file's streamlines in world RAS+ mm (float32, as stored).

    The points and their world coordinates are those of ``nibabel.streamlines.load``;
    files without per-point scalars or per-streamline properties are parsed as whole
    arrays (much faster for 10^5 streamlines), others by nibabel.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "tractogram file not found")
    try:
        fast = _load_trk_arrays(path)
        if fast is not None:
            return fast
        return nib.streamlines.load(str(path)).streamlines
    except Exception as exc:  # nibabel raises several types for a malformed file
        raise InputError(path, f"not a readable tractogram ({exc})") from None


def _load_trk_arrays(path: Path) -> ArraySequence | None:
    """Streamlines of a plain ``.trk`` file (no scalars or properties), or None for other files."""
    from nibabel.streamlines import Field
    from nibabel.streamlines.tractogram import Tractogram
    from nibabel.streamlines.trk import TrkFile, get_affine_trackvis_to_rasmm

    header = TrkFile._read_header(str(path))
    if header[Field.NB_SCALARS_PER_POINT] > 0 or header[Field.NB_PROPERTIES_PER_STREAMLINE] > 0:
        return None
    i4 = np.dtype(header[Field.ENDIANNESS] + "i4")
    f4 = np.dtype(header[Field.ENDIANNESS] + "f4")
    if not f4.isnative:
        return None
    raw = path.read_bytes()[int(header["_offset_data"]):]
    raw = raw[: len(raw) - len(raw) % 4]
    words = memoryview(raw).cast("i") if i4.isnative and i4.itemsize == 4 else np.frombuffer(raw, dtype=i4)
    expected = int(header[Field.NB_STREAMLINES]) or None
    counts = []
    pos, n_words = 0, len(words)
    while pos < n_words and (expected is None or len(counts) < expected):
        n = int(words[pos])
        if n < 0 or pos + 1 + 3 * n > n_words:
            return None  # truncated or malformed: let nibabel report it
        counts.append(n)
        pos += 1 + 3 * n
    counts = np.asarray(counts, dtype=np.intp)
    starts = np.arange(len(counts)) + 3 * (np.cumsum(counts) - counts)
    is_point = np.ones(pos, dtype=bool)
    is_point[starts] = False
    points = np.frombuffer(raw, dtype=f4, count=pos)[is_point].reshape(-1, 3)
    seq = ArraySequence()
    if len(counts):
        seq._data = np.ascontiguousarray(points)
        seq._lengths = counts
        seq._offsets = (np.cumsum(counts) - counts).astype(np.intp)
    tractogram = Tractogram(seq)
    tractogram.affine_to_rasmm = get_affine_trackvis_to_rasmm(header)
    return tractogram.to_world().streamlines
