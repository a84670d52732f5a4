"""Along-tract profiles, bundle summary metrics and their tables.

Profiles follow AFQ: every streamline is oriented inferior to superior (first point
lower in world z than the last), resampled to ``n_nodes`` equidistant nodes, the scalar
map is sampled at each node with trilinear interpolation, and each node's value is a
weighted mean across streamlines.

The pipeline's weights (given ``prior``, the Juelich CST probability of the side warped to
the subject, :func:`prior_weights`) are the atlas probability at the node, never below
:data:`PRIOR_WEIGHT_FLOOR`: a soft inclusion criterion along the whole streamline. At 3 mm
the edge of a tracked bundle mixes in voxels of its neighbours (transverse pontine fibres,
medial lemniscus, the thalamus' border), and where a scan's tracking drifts a voxel off the
tract (a sagittal scan's brainstem path runs 2-4 mm medial of an axial scan's of the same
head), those samples weigh less; the floor keeps a profile for a tract that the atlas does
not hold (displaced, or registration off). Without ``prior``, the weights are AFQ's: Gaussian
in the Mahalanobis distance ``d`` of the streamline's node from the bundle's node cloud,
``exp(-d**2 / 2)`` normalised per node (dipy's ``gaussian_weights`` uses ``1 / d`` instead,
which is unbounded for the most central streamline), so streamlines near the bundle's own
core count most; that core follows the scan's own drift (measurements:
``docs/decisions.md``, "#17 profile weights").
Node 0 is the inferior (brainstem) end.

Anchored profiles (the pipeline's, given the MNI z of the subject grid): as in AFQ, where a
profile runs between the bundle's two waypoints, each streamline is cut to the stretch
between two fixed anatomical levels, :data:`PROFILE_START_Z_MM` (MNI z = -27 mm, in the
upper pons) and :data:`PROFILE_END_Z_MM` (MNI z = 25 mm, the top of the CST's compact trunk,
above which it fans out into the corona radiata), before it is resampled; so node k lies
at the same level of the tract in every scan, whatever the level where tracking happened
to stop in the brainstem or which gyrus the streamline reaches. A streamline that starts
above the lower level (or ends below the upper one) is taken to continue that far (the
difference in MNI z, in mm); its nodes there are NaN (:func:`resample_between_levels`).

Summary metrics (:func:`bundle_metrics`) are taken over the voxels of the bundle's
density map: by default each visited voxel counts once (``weighting="voxel"``); with
``weighting="streamlines"`` each voxel counts once per streamline through it, i.e. the
mean along the streamlines (the convention of most tractography tools), which the
pipeline reports. The bundle's volume is the number of visited voxels either way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..config import METRICS_WEIGHTINGS, PipelineConfig
from ..errors import InputError
from .bundles import density_map, world_grid
from .cleaning import POSITION_FLOOR_MM
from .coverage import PROFILE_START_Z_MM
from .streamlines import Packed, resample_streamlines, streamline_lengths

__all__ = [
    "N_NODES",
    "METRICS",
    "orient_inferior_superior",
    "sample_nodes",
    "node_weights",
    "prior_weights",
    "node_profiles",
    "tract_profile",
    "tract_profiles",
    "resample_between_levels",
    "bundle_metrics",
    "laterality_index",
    "profiles_table",
    "summary_row",
]

LOGGER = logging.getLogger(__name__)

#: Nodes per profile.
N_NODES = 100
#: Lowest weight of a profile sample in :func:`prior_weights`: a point the atlas gives a CST
#: probability of 0 weighs a tenth of one it gives 1 (a fifth of one at 0.5), so that
#: samples off the population tract count less without being dropped; any floor from 0.05
#: to 0.2 gives the same profile agreement (docs/decisions.md, "#17 profile weights").
PRIOR_WEIGHT_FLOOR = 0.1
#: MNI z (mm) of an anchored profile's last node: the top of the CST's compact trunk, where
#: the Juelich CST map doubles in width as the tract fans out into the corona radiata towards
#: the gyri (docs/decisions.md, "#17 profiles"). The first node is at
#: :data:`~.coverage.PROFILE_START_Z_MM`.
PROFILE_END_Z_MM = 25.0

#: The tensor maps summarised by default, with their units.
METRICS = {"fa": "1", "md": "mm^2/s", "rd": "mm^2/s", "ad": "mm^2/s"}

#: Summary columns of the covered extent -> key of ``coverage["extent"]``
#: (:func:`csttool_nipype.science.rois.coverage`): the MNI z range (mm) of the CST imaged on
#: both sides and the share of the template CST's length it holds.
COVERAGE_COLUMNS = {"covered_z_min_mm": "z_min_mm", "covered_z_max_mm": "z_max_mm", "covered_share": "share"}

#: A profile node of a tract cut by the field of view needs this share of its streamlines.
MIN_NODE_SUPPORT = 0.5

#: Share of a bundle's streamlines a voxel must hold to count in its density volume. The
#: visited-voxel volume grows with the streamline count (every stray streamline adds its own
#: voxels); a share of the count does not, so two runs that find the same tract with
#: different counts get the same density volume. One in twenty keeps the tract's body and
#: drops the fringe that single streamlines make.
DENSITY_SHARE = 0.05
#: Voxel size (mm) of the grid the volumes are counted on: cubes aligned with the world axes
#: (:func:`~.bundles.world_grid`), the same for every scan. Counted on the scan's own grid, a
#: tract a few voxels wide occupies a number of voxels that depends on the voxel size and on
#: how the slices are angled across it; on one fixed grid only the tract decides. 2 mm: the
#: template grid the registration runs on, finer than the 2.5-3 mm of clinical protocols.
VOLUME_GRID_MM = 2.0
#: Profile nodes whose means are reported as the tract's core (``<map>_core_mean``): the
#: middle 60 of 100, away from the ends (the pons, where the transverse pontine fibres cross the
#: tract, and the corona radiata, where others cross it) and from where partial fields of view
#: cut the profile: on anchored profiles about MNI z = -16 to 14 mm (peduncle, capsule).
CORE_NODES = slice(20, 80)
#: Fewer streamlines than this on one side raises the ``too_few_streamlines_<side>`` flag.
MIN_STREAMLINES = PipelineConfig().min_streamlines


def orient_inferior_superior(bundle) -> list[np.ndarray]:
    """Each streamline as a float64 array whose first point is not higher (world z) than its last."""
    out = []
    for s in bundle:
        s = np.asarray(s, dtype=np.float64)
        out.append(s[::-1] if s[0, 2] > s[-1, 2] else s)
    return out


def _oriented_packed(bundle):
    """:func:`orient_inferior_superior` on packed streamlines (see ``bundles.Packed``)."""
    packed = Packed.of(bundle)
    z = packed.points[:, 2]
    return packed.reversed_where(z[packed.starts] > z[packed.starts + packed.counts - 1])


def sample_nodes(nodes: np.ndarray, scalar_map: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Trilinear samples of a 3D map at world points.

    Parameters
    ----------
    nodes : ndarray, shape (..., 3)
        World RAS+ mm.
    scalar_map : ndarray, shape (X, Y, Z)
        Map on the grid of ``affine``.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine.

    Returns
    -------
    values : ndarray, shape ``nodes.shape[:-1]``
        Points beyond the grid take the value of the nearest edge voxel.
    """
    from scipy.ndimage import map_coordinates

    nodes = np.asarray(nodes, float)
    inv = np.linalg.inv(np.asarray(affine, float))
    vox = nodes.reshape(-1, 3) @ inv[:3, :3].T + inv[:3, 3]
    values = map_coordinates(np.asarray(scalar_map, dtype=np.float64), vox.T, order=1, mode="nearest")
    return values.reshape(nodes.shape[:-1])


def prior_weights(resampled: np.ndarray, prior: np.ndarray, affine: np.ndarray,
                  floor: float = PRIOR_WEIGHT_FLOOR) -> np.ndarray:
    """Node weights from a tract probability map, shape (N, n_nodes), summing to 1 over streamlines.

    Parameters
    ----------
    resampled : ndarray, shape (N, n_nodes, 3)
        Streamline nodes, world RAS+ mm; NaN nodes (not reached) weigh 0.
    prior : ndarray, shape (X, Y, Z)
        Probability (0-1) that a voxel lies in the tract, on the grid of ``affine``.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of ``prior``.
    floor : float
        Lowest weight of a reached node (:data:`PRIOR_WEIGHT_FLOOR`).

    Returns
    -------
    weights : ndarray, shape (N, n_nodes)
        ``max(p, floor)`` at each node (trilinear), normalised per node; 0 where no node is reached.
    """
    resampled = np.asarray(resampled, float)
    valid = np.isfinite(resampled[..., 0])
    p = sample_nodes(np.where(valid[..., None], resampled, 0.0), prior, affine)
    w = np.where(valid, np.maximum(np.nan_to_num(p), float(floor)), 0.0)
    total = w.sum(axis=0, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def tract_profile(bundle, scalar_map: np.ndarray, affine: np.ndarray, n_nodes: int = N_NODES) -> np.ndarray:
    """Weighted along-tract profile of a scalar map.

    Parameters
    ----------
    bundle : ArraySequence or sequence of (n_i, 3) arrays
        Streamlines in world RAS+ mm, in any orientation (each is oriented inferior
        to superior here).
    scalar_map : ndarray, shape (X, Y, Z)
        The map to profile (e.g. FA, or MD in mm^2/s); NaN voxels are left out.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of ``scalar_map``.
    n_nodes : int
        Number of nodes.

    Returns
    -------
    profile : ndarray, shape (n_nodes,)
        Node 0 is the inferior end; all NaN for an empty bundle.
    """
    return tract_profiles(bundle, {"map": scalar_map}, affine, n_nodes)["map"]


def tract_profiles(bundle, maps: Mapping[str, np.ndarray], affine: np.ndarray,
                   n_nodes: int = N_NODES, missing_length_mm: float = 0.0,
                   mni_z: np.ndarray | None = None, prior: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:func:`tract_profile` of several maps of the same grid, ``{name: profile}``.

    The streamlines are oriented, resampled and weighted once for all maps; each
    profile equals what :func:`tract_profile` gives for its map.

    ``missing_length_mm`` (> 0 for a tract cut by the field of view, see
    :func:`csttool_nipype.science.coverage.missing_length_mm`): each streamline is taken
    to continue that far below its first point; the nodes there are NaN and the others
    sit where they would on the whole streamline (node 0 at the missing start).

    ``mni_z`` (MNI z in mm of every voxel of the maps' grid, NaN beyond the registration's
    reach): the profile is anchored between :data:`PROFILE_START_Z_MM` and
    :data:`PROFILE_END_Z_MM` (:func:`resample_between_levels`); a field of view that stops
    above the lower level leaves the nodes below its start NaN, so ``missing_length_mm`` is
    not used.

    ``prior`` (the tract's probability map on the maps' grid): node weights from it
    (:func:`prior_weights`) instead of the Gaussian core weights (:func:`node_weights`).
    """
    if len(bundle) == 0:
        LOGGER.warning("empty bundle: the profile is all NaN")
        return {name: np.full(int(n_nodes), np.nan) for name in maps}
    if mni_z is not None:
        resampled = resample_between_levels(bundle, mni_z, affine, int(n_nodes))
    elif missing_length_mm > 0:
        resampled = resample_below_missing(bundle, int(n_nodes), float(missing_length_mm))
    else:
        resampled = resample_streamlines(_oriented_packed(bundle), int(n_nodes))
    if prior is None:
        return node_profiles(resampled, maps, affine)
    return node_profiles(resampled, maps, affine, lambda nodes: prior_weights(nodes, prior, affine))


def resample_below_missing(bundle, n_nodes: int, missing_length_mm: float) -> np.ndarray:
    """Nodes of streamlines that start ``missing_length_mm`` below their first point.

    Each streamline (oriented inferior to superior) is extended by that length at its
    start and the whole resampled to ``n_nodes`` equidistant nodes; nodes on the
    extension are NaN. Returns (N, n_nodes, 3), world mm.
    """
    packed = _oriented_packed(bundle)
    out = np.full((len(packed), int(n_nodes), 3), np.nan)
    for i, (start, count) in enumerate(zip(packed.starts, packed.counts)):
        pts = packed.points[start:start + count]
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        t = np.linspace(0.0, arc[-1] + missing_length_mm, int(n_nodes)) - missing_length_mm
        ok = t >= 0
        out[i, ok] = np.stack([np.interp(t[ok], arc, pts[:, d]) for d in range(3)], axis=1)
    return out


def _level_crossing(z: np.ndarray, arc: np.ndarray, level: float) -> float | None:
    """Arc length (mm) where ``z`` first reaches ``level`` going up the streamline; None if never."""
    with np.errstate(invalid="ignore"):
        up = np.flatnonzero((z[:-1] < level) & (z[1:] >= level))
    if not len(up):
        return None
    i = up[0]
    f = (level - z[i]) / (z[i + 1] - z[i])
    return float(arc[i] + f * (arc[i + 1] - arc[i]))


def resample_between_levels(bundle, mni_z: np.ndarray, affine: np.ndarray, n_nodes: int = N_NODES,
                            z_start: float = PROFILE_START_Z_MM, z_end: float = PROFILE_END_Z_MM) -> np.ndarray:
    """Nodes of each streamline's stretch between two MNI levels.

    Each streamline (oriented inferior to superior) is cut where its MNI z (``mni_z``
    sampled trilinearly at its points) first reaches ``z_start`` and where it first reaches
    ``z_end``, and that stretch is resampled to ``n_nodes`` equidistant nodes. A streamline
    that starts above ``z_start`` is taken to start ``z_first - z_start`` mm below its first
    point, one that ends below ``z_end`` to run on ``z_end - z_last`` mm (the CST runs
    close to vertical there); nodes on those extensions are NaN. A streamline without any
    MNI z (beyond the registration's reach) has NaN nodes only.

    Returns (N, n_nodes, 3), world mm.
    """
    packed = _oriented_packed(bundle)
    n_nodes = int(n_nodes)
    out = np.full((len(packed), n_nodes, 3), np.nan)
    z_all = sample_nodes(packed.points, mni_z, affine)   # one pass over every point
    for i, (start, count) in enumerate(zip(packed.starts, packed.counts)):
        pts = packed.points[start:start + count]
        z = z_all[start:start + count]
        finite = np.flatnonzero(np.isfinite(z))
        if len(pts) < 2 or not len(finite):
            continue
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        first, last = z[finite[0]], z[finite[-1]]
        a = _level_crossing(z, arc, z_start) if first < z_start else arc[finite[0]] - (first - z_start)
        b = _level_crossing(z, arc, z_end) if last >= z_end else arc[finite[-1]] + (z_end - last)
        if a is None or b is None or not b > a:
            continue
        t = np.linspace(a, b, n_nodes)
        ok = (t >= 0) & (t <= arc[-1])
        out[i, ok] = np.stack([np.interp(t[ok], arc, pts[:, d]) for d in range(3)], axis=1)
    return out


def node_weights(resampled: np.ndarray, floor_mm: float = POSITION_FLOOR_MM) -> np.ndarray:
    """Gaussian Mahalanobis weights ``exp(-d**2/2)``, shape (N, n_nodes), summing to 1 over streamlines.

    ``d`` is taken from the node cloud of the streamlines that reach the node (NaN nodes
    weigh 0); ``floor_mm`` is added in quadrature to its covariance (:func:`~.cleaning.node_mahalanobis`).
    """
    valid = np.isfinite(resampled[..., 0])
    n = np.maximum(valid.sum(axis=0), 1)
    mean = np.where(valid[..., None], resampled, 0.0).sum(axis=0) / n[:, None]
    delta = np.where(valid[..., None], resampled - mean, 0.0)
    cov = np.einsum("snj,snk->njk", delta, delta) / n[:, None, None] + (float(floor_mm) ** 2) * np.eye(3)
    d2 = np.einsum("snj,njk,snk->sn", delta, np.linalg.inv(cov), delta)
    w = np.where(valid, np.exp(-0.5 * np.maximum(d2, 0.0)), 0.0)
    total = w.sum(axis=0, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def node_profiles(resampled: np.ndarray, maps: Mapping[str, np.ndarray], affine: np.ndarray,
                  weigh=node_weights) -> dict[str, np.ndarray]:
    """Weighted profiles ``{name: (n_nodes,)}`` of resampled nodes, some of which may be NaN (not reached).

    ``resampled``: (N, n_nodes, 3), world RAS+ mm. A node that fewer than
    :data:`MIN_NODE_SUPPORT` of the streamlines reach is NaN in every profile. ``weigh``
    maps the nodes left (N, n_nodes, 3) to their weights (N, n_nodes), e.g.
    :func:`node_weights` (default) or :func:`prior_weights` with its map bound.
    """
    resampled = np.array(resampled, dtype=np.float64)
    reached = np.isfinite(resampled[..., 0])
    # a node most streamlines do not reach is left out: its few values are those of the
    # longest streamlines, at the very edge of the field of view
    resampled[:, reached.mean(axis=0) < MIN_NODE_SUPPORT] = np.nan
    reached = np.isfinite(resampled[..., 0])
    weights = weigh(resampled)
    out = {}
    for name, scalar_map in maps.items():
        scalar_map = np.asarray(scalar_map)
        if scalar_map.ndim != 3:
            raise InputError(None, f"scalar map must be 3D, got shape {scalar_map.shape}")
        values = sample_nodes(np.where(reached[..., None], resampled, 0.0), scalar_map, affine)
        valid = reached & np.isfinite(values)
        w = np.where(valid, weights, 0.0)
        total = w.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(total > 0, (w * np.where(valid, values, 0.0)).sum(axis=0) / total, np.nan)
    return out


def core_means(profiles: Mapping[str, np.ndarray]) -> dict:
    """``<map>_core_mean``: the mean of each profile over :data:`CORE_NODES` (NaN nodes left out)."""
    out = {}
    for name, values in profiles.items():
        core = np.asarray(values, float)[CORE_NODES]
        out[f"{name}_core_mean"] = float(np.nanmean(core)) if np.isfinite(core).any() else float("nan")
    return out


def bundle_metrics(
    bundle,
    maps: Mapping[str, np.ndarray],
    affine: np.ndarray,
    *,
    weighting: str = "streamlines",
    volume_grid_mm: float = VOLUME_GRID_MM,
) -> dict:
    """Summary numbers of one bundle.

    Parameters
    ----------
    bundle : ArraySequence or sequence of (n_i, 3) arrays
        Streamlines in world RAS+ mm.
    maps : mapping of str to ndarray, shape (X, Y, Z)
        Scalar maps on the grid of ``affine`` (typically ``fa``, ``md``, ``rd``,
        ``ad``; diffusivities in mm^2/s).
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of the maps.
    weighting : {"voxel", "streamlines"}
        ``"voxel"``: every visited voxel counts once. ``"streamlines"``: a voxel counts
        once per streamline passing through it (:func:`~.bundles.density_map`), so a voxel
        at the bundle's edge that one stray streamline touches weighs 1/1000 of a core
        voxel that every streamline crosses (measured on the phantom: ``docs/decisions.md``,
        "science/profiles.py").
    volume_grid_mm : float
        Voxel size of the world-aligned grid the volumes are counted on (:data:`VOLUME_GRID_MM`).

    Returns
    -------
    metrics : dict
        ``streamline_count`` (int), ``mean_length_mm``, ``volume_mm3`` (mm³ of the
        ``volume_grid_mm`` voxels visited by at least one streamline), ``density_volume_mm3``
        (mm³ of those that at least :data:`DENSITY_SHARE` of the streamlines pass through)
        and, per map, ``<name>_mean`` and ``<name>_std`` (population SD, same weights) over
        the map voxels visited, NaN voxels left out. Means are NaN for an empty bundle.
    """
    if not maps:
        raise InputError(None, "bundle_metrics needs at least one map (for the grid shape)")
    if weighting not in METRICS_WEIGHTINGS:
        raise InputError(None, f"weighting must be 'voxel' or 'streamlines', got {weighting!r}")
    shape = next(iter(maps.values())).shape[:3]
    n = len(bundle)
    out: dict = {"streamline_count": int(n)}
    out["mean_length_mm"] = float(streamline_lengths(bundle).mean()) if n else float("nan")
    packed = Packed.of(bundle)   # packed once for both grids
    counts = density_map(packed, shape, affine) if n else np.zeros(shape, np.int64)
    mask = counts > 0
    grid_shape, grid_affine = world_grid(packed, volume_grid_mm)
    on_grid = density_map(packed, grid_shape, grid_affine) if n else np.zeros(grid_shape, np.int64)
    cube = float(volume_grid_mm) ** 3
    out["volume_mm3"] = float((on_grid > 0).sum() * cube)
    out["density_volume_mm3"] = float((on_grid >= max(1, math.ceil(DENSITY_SHARE * n))).sum() * cube) if n else 0.0
    for name, arr in maps.items():
        arr = np.asarray(arr, dtype=np.float64)
        if arr.shape[:3] != tuple(shape):
            raise InputError(None, f"map {name!r} has shape {arr.shape}, expected {tuple(shape)}")
        vals = arr[mask]
        weights = counts[mask].astype(np.float64) if weighting == "streamlines" else np.ones(vals.size)
        ok = np.isfinite(vals)
        vals, weights = vals[ok], weights[ok]
        if vals.size:
            mean = float(np.average(vals, weights=weights))
            out[f"{name}_mean"] = mean
            out[f"{name}_std"] = float(np.sqrt(np.average((vals - mean) ** 2, weights=weights)))
        else:
            out[f"{name}_mean"] = float("nan")
            out[f"{name}_std"] = float("nan")
    return out


def laterality_index(left, right) -> float:
    """``(L - R) / (L + R)``; NaN when either value is missing or not finite, or ``L + R`` is 0.

    Positive means larger on the left.
    """
    try:
        left = float(left)
        right = float(right)
    except (TypeError, ValueError):
        return float("nan")
    total = left + right
    if not (math.isfinite(left) and math.isfinite(right)) or total == 0:
        return float("nan")
    return (left - right) / total


def profiles_table(subject: str, profiles: Mapping[str, Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """Long-format profile table.

    Parameters
    ----------
    subject : str
        Subject label, repeated on every row.
    profiles : mapping side -> metric -> ndarray, shape (n_nodes,)
        E.g. ``{"left": {"fa": array, "md": array}, "right": {...}}``.

    Returns
    -------
    table : DataFrame
        Columns ``subject``, ``side``, ``node`` (0 = inferior), ``metric``, ``value``;
        rows ordered by side, metric, node as given.
    """
    frames = []
    for side, per_metric in profiles.items():
        for metric, values in per_metric.items():
            values = np.asarray(values, dtype=np.float64).ravel()
            frames.append(pd.DataFrame({
                "subject": str(subject),
                "side": str(side),
                "node": np.arange(len(values), dtype=np.int64),
                "metric": str(metric),
                "value": values,
            }))
    if not frames:
        return pd.DataFrame({"subject": pd.Series(dtype=str), "side": pd.Series(dtype=str),
                             "node": pd.Series(dtype=np.int64), "metric": pd.Series(dtype=str),
                             "value": pd.Series(dtype=np.float64)})
    return pd.concat(frames, ignore_index=True)


def summary_row(
    subject: str,
    metrics_left: Mapping[str, float],
    metrics_right: Mapping[str, float],
    flags: Mapping[str, str] | None = None,
    *,
    min_streamlines: int = MIN_STREAMLINES,
    extent: Mapping[str, float] | None = None,
) -> dict:
    """One row of the per-subject summary table.

    Parameters
    ----------
    subject : str
        Subject label.
    metrics_left, metrics_right : mapping
        Outputs of :func:`bundle_metrics` for each side.
    flags : mapping of str to str, optional
        Quality flags raised upstream, name -> reason.
    min_streamlines : int
        A side with fewer streamlines gets the ``too_few_streamlines_<side>`` flag
        (0 disables it).
    extent : mapping, optional
        ``coverage["extent"]`` of the ROI stage: its values go to the
        :data:`COVERAGE_COLUMNS` (NaN without it).

    Returns
    -------
    row : dict
        ``subject``; ``<metric>_left``, ``<metric>_right`` and ``<metric>_li``
        (:func:`laterality_index`) for every metric of either side; the
        :data:`COVERAGE_COLUMNS`; ``flags``
        (names joined by ``;``, empty when none), ``flag_reasons`` (``name: reason``
        joined by ``; ``) and ``n_flags``.
    """
    row: dict = {"subject": str(subject)}
    keys = list(dict.fromkeys([*metrics_left.keys(), *metrics_right.keys()]))
    for key in keys:
        lv = metrics_left.get(key, float("nan"))
        rv = metrics_right.get(key, float("nan"))
        row[f"{key}_left"] = lv
        row[f"{key}_right"] = rv
        row[f"{key}_li"] = laterality_index(lv, rv)
    for column, key in COVERAGE_COLUMNS.items():
        value = (extent or {}).get(key)
        row[column] = float(value) if value is not None else float("nan")
    all_flags = dict(flags or {})
    for side, metrics in (("left", metrics_left), ("right", metrics_right)):
        count = metrics.get("streamline_count", 0)
        count = 0 if count is None or not np.isfinite(count) else int(count)
        if count < int(min_streamlines):
            all_flags.setdefault(f"too_few_streamlines_{side}",
                                 f"{count} {side} CST streamlines (< {int(min_streamlines)})")
    names = sorted(all_flags)
    row["flags"] = ";".join(names)
    row["flag_reasons"] = "; ".join(f"{name}: {all_flags[name]}" for name in names)
    row["n_flags"] = len(names)
    return row
