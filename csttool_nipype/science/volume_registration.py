"""Same-contrast registration of one volume to a template, for motion correction.

Gauss-Newton (inverse compositional) on the least-squares difference after a linear
intensity fit, coarse to fine, deterministic. The transform is rigid, optionally with the
eddy-current terms of :mod:`csttool_nipype.science.eddy`. Conventions (world RAS+ mm, what
a transform maps) are those of :mod:`csttool_nipype.science.motion`.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from csttool_nipype.science.eddy import eddy_matrix

#: Radius (mm) of the sphere on which rotations are turned into displacements for the
#: framewise displacement (Power et al. 2012).
FD_RADIUS_MM = 50.0

# Same-contrast registration (b0 -> b0, DW -> mean DW of its shell): Gauss-Newton on the
# least-squares difference after a linear intensity fit, coarse to fine. Each level is
# (Gaussian smoothing sigma in mm, grid stride in voxels).
_LS_LEVELS = ((6.0, 2), (3.0, 2), (1.5, 2))
_LS_MAX_ITER = 20
_LS_TOL_MM = 2e-3  # stop when the update moves no point of the 50 mm sphere more than this
_LS_MARGIN = 6  # voxels of the moving image kept around the region (cropped before smoothing)


def _grid_centre(shape, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ ((np.asarray(shape[:3], float) - 1) / 2.0) + affine[:3, 3]


def _rigid_matrix(rotvec: np.ndarray, trans: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Rotation by ``rotvec`` (rad) about ``centre`` (mm), then translation ``trans`` (mm)."""
    m = np.eye(4)
    r = Rotation.from_rotvec(rotvec).as_matrix()
    m[:3, :3] = r
    m[:3, 3] = centre - r @ centre + trans
    return m


class _LSTemplate:
    """A static image prepared for :func:`_register_ls`: per pyramid level, the sample
    points (world mm), the smoothed static values there, the Jacobian of the static
    image w.r.t. the increment parameters and its Gram matrix.

    The increment is rigid (3 rotation, 3 translation parameters); with ``pe_world`` (a
    world unit vector, the phase-encoding axis) it also has the 3 eddy-current terms of
    :func:`~csttool_nipype.science.eddy.eddy_matrix`: a displacement along that axis
    linear in position (scale and shears along the phase-encoding direction).
    """

    def __init__(self, static: np.ndarray, affine: np.ndarray, region: np.ndarray | None = None,
                 pe_world: np.ndarray | None = None):
        from scipy import ndimage

        self.pe_world = None if pe_world is None else np.asarray(pe_world, float) / np.linalg.norm(pe_world)
        self.affine = np.asarray(affine, float)
        self.shape = tuple(static.shape[:3])
        lin = self.affine[:3, :3]
        self.lin_inv = np.linalg.inv(lin)
        self.zooms = np.sqrt((lin**2).sum(0))
        self.centre = _grid_centre(self.shape, self.affine)
        static = np.asarray(static, np.float64)
        if region is None:
            region = np.ones(self.shape, bool)
        # the moving image is only needed around the region: crop it to this box before
        # smoothing (motion larger than the margin maps points outside -> ignored)
        idx_all = np.argwhere(region)
        if idx_all.size:
            lo = np.maximum(idx_all.min(0) - _LS_MARGIN, 0)
            hi = np.minimum(idx_all.max(0) + _LS_MARGIN + 1, self.shape)
        else:
            lo, hi = np.zeros(3, int), np.asarray(self.shape)
        self.box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        self.box_lo = lo.astype(float)
        self.box_upper = (hi - lo).astype(float) - 1
        self.levels = []
        for sigma_mm, stride in _LS_LEVELS:
            s_img = ndimage.gaussian_filter(static, sigma_mm / self.zooms, mode="nearest") if sigma_mm > 0 else static
            sub = np.zeros(self.shape, bool)
            sub[::stride, ::stride, ::stride] = True
            pick = region & sub
            # keep away from the border so that central differences exist
            pick[[0, -1], :, :] = pick[:, [0, -1], :] = pick[:, :, [0, -1]] = False
            idx = np.argwhere(pick)
            if idx.shape[0] < 50:
                continue
            i, j, k = idx.T
            grad_index = np.stack([
                (s_img[i + 1, j, k] - s_img[i - 1, j, k]) / 2,
                (s_img[i, j + 1, k] - s_img[i, j - 1, k]) / 2,
                (s_img[i, j, k + 1] - s_img[i, j, k - 1]) / 2,
            ], axis=1)
            g_world = grad_index @ self.lin_inv  # d/d(world mm) = lin^-T grad_index, rows
            x = idx @ lin.T + self.affine[:3, 3]
            j0 = np.concatenate([np.cross(x - self.centre, g_world), g_world], axis=1)
            if self.pe_world is not None:
                j0 = np.concatenate([j0, (g_world @ self.pe_world)[:, None] * (x - self.centre)], axis=1)
            s_val = s_img[pick]
            self.levels.append({
                "sigma_mm": sigma_mm, "x": x, "s": s_val, "j0": j0, "h0": j0.T @ j0,
                "n": float(s_val.size), "sx": float(s_val.sum()), "sxx": float(s_val @ s_val),
            })


def _register_ls(
    template: "_LSTemplate | np.ndarray",
    moving: np.ndarray,
    affine: np.ndarray,
    region: np.ndarray | None = None,
    starting: np.ndarray | None = None,
    first_level: int = 0,
) -> np.ndarray:
    """Rigid world transform ``A`` with ``moving(A x) ~ a * static(x) + b`` (same contrast).

    Inverse-compositional Gauss-Newton (Baker & Matthews 2004) on
    ``sum_x [moving(A x) - a static(x) - b]^2`` over the voxels of ``region`` (static
    grid), the intensity scale ``a`` and offset ``b`` refitted by linear regression at
    every iteration. The warp increment is a small rotation about the grid centre plus a
    translation; the static image's Jacobian is computed once per level (pass an
    :class:`_LSTemplate` to reuse it across volumes). Coarse-to-fine over
    ``_LS_LEVELS`` (both images smoothed alike with an isotropic Gaussian in mm, so
    smoothing does not bias the pose), starting at level ``first_level`` (a refinement
    from a good ``starting`` estimate can skip the coarse levels; negative counts from
    the finest). Deterministic: no random sampling.
    """
    from scipy import ndimage

    tpl = template if isinstance(template, _LSTemplate) else _LSTemplate(template, affine, region)
    moving = np.asarray(moving, np.float64)[tpl.box]
    T = np.eye(4) if starting is None else np.array(starting, float)
    upper = tpl.box_upper
    origin = tpl.affine[:3, 3]
    for level in tpl.levels[first_level:]:
        sigma_mm = level["sigma_mm"]
        m_img = ndimage.gaussian_filter(moving, sigma_mm / tpl.zooms, mode="nearest") if sigma_mm > 0 else moving
        x, s_all, j0_all, h0_all = level["x"], level["s"], level["j0"], level["h0"]
        for _ in range(_LS_MAX_ITER):
            lin_t = tpl.lin_inv @ T[:3, :3]
            vox = x @ lin_t.T + (tpl.lin_inv @ (T[:3, 3] - origin) - tpl.box_lo)
            valid = np.all((vox >= 0) & (vox <= upper), axis=1)
            if valid.all():
                s, j0, h0 = s_all, j0_all, h0_all
                n, sx, sxx = level["n"], level["sx"], level["sxx"]
                m_val = ndimage.map_coordinates(m_img, vox.T, order=1, mode="nearest")
            else:
                if valid.sum() < 50:
                    break
                s, j0 = s_all[valid], j0_all[valid]
                h0 = j0.T @ j0
                n, sx, sxx = float(s.size), float(s.sum()), float(s @ s)
                m_val = ndimage.map_coordinates(m_img, vox[valid].T, order=1, mode="nearest")
            sy, sxy = float(m_val.sum()), float(s @ m_val)
            den = n * sxx - sx * sx
            if den <= 0:
                break
            a = (n * sxy - sx * sy) / den
            b = (sy - a * sx) / n
            if not np.isfinite(a) or abs(a) < 1e-12:
                break
            r = m_val - a * s - b
            try:
                dp = np.linalg.solve(h0, j0.T @ r) / a
            except np.linalg.LinAlgError:
                break
            step = _rigid_matrix(dp[:3], dp[3:6], tpl.centre)
            if tpl.pe_world is not None:
                step = step @ eddy_matrix(dp[6:], tpl.pe_world, tpl.centre)
            T = T @ np.linalg.inv(step)
            if np.linalg.norm(dp[:3]) * FD_RADIUS_MM + np.linalg.norm(dp[3:6]) \
                    + np.linalg.norm(dp[6:]) * FD_RADIUS_MM < _LS_TOL_MM:
                break
    return T
