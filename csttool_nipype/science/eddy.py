"""Eddy-current distortion along the phase-encoding axis: model, separation from head motion.

Model (first order, as in FSL's eddy without its higher-order terms): the eddy currents
of a diffusion gradient shift each voxel along the phase-encoding axis ``u`` (a world
unit vector) by ``d(x) = s + w · (x - c)`` mm, where ``c`` is the grid centre; ``s`` is a
shift, ``w`` (3 numbers, mm/mm) a scale along ``u`` and two shears. The motion correction
(:mod:`csttool_nipype.science.motion`) estimates, for each diffusion-weighted volume, a
rigid head motion composed with this displacement; the shift ``s`` cannot be told from a
head translation along ``u`` in one volume, so it is separated across volumes: eddy
currents scale with the gradient vector ``g`` (the field of ``-g`` is the opposite of that of
``g``), head motion does not, so the part of the along-``u`` translation that is linear in
``g`` (least squares over the volumes, with an intercept) is counted as eddy shift and the
rest as head motion. Only the rotation of the rigid part rotates the b-vectors.
"""

from __future__ import annotations

import numpy as np

#: Fewest diffusion-weighted volumes for separating the eddy shift from head translation
#: (4 regression parameters: intercept and the 3 gradient components, plus 1 to spare).
MIN_VOLUMES_FOR_SEPARATION = 5


def phase_encoding_world(metadata: dict | None, affine) -> np.ndarray | None:
    """World unit vector of the phase-encoding axis, or None when the sidecar does not say.

    ``PhaseEncodingDirection`` (``i``, ``j-``, ...) or ``PhaseEncodingAxis`` name a voxel
    axis of the image whose voxel-to-world ``affine`` is given (after the import's
    reorientation, the import's metadata names the reoriented image's axes); the sign does
    not matter for an axis.
    """
    meta = metadata or {}
    code = str(meta.get("PhaseEncodingDirection") or meta.get("PhaseEncodingAxis") or "").strip()
    axis = {"i": 0, "j": 1, "k": 2}.get(code[:1])
    if axis is None or affine is None:
        return None
    column = np.asarray(affine, float)[:3, axis]
    norm = np.linalg.norm(column)
    return column / norm if norm > 0 else None


def eddy_matrix(w: np.ndarray, u: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """4x4 world map ``x -> x + u (w · (x - centre))`` (mm)."""
    m = np.eye(4)
    m[:3, :3] += np.outer(u, w)
    m[:3, 3] = -np.outer(u, w) @ np.asarray(centre, float)
    return m


def _polar_rotation(linear: np.ndarray) -> np.ndarray:
    a, _, bt = np.linalg.svd(linear)
    r = a @ bt
    if np.linalg.det(r) < 0:
        a[:, -1] *= -1
        r = a @ bt
    return r


def split_eddy(transform: np.ndarray, u: np.ndarray, centre: np.ndarray):
    """Write an affine ``A`` as ``rigid @ eddy_matrix(w, u, centre)``; returns ``(rigid, w)``.

    With ``L`` the linear part of ``A``, ``R^T L = I + u w^T`` means ``L^T (R p) = p`` for every
    ``p`` perpendicular to ``u``: the rotation on that plane is ``L^-T``, and ``R u`` completes
    it (the nearest rotation is taken when ``A`` is not exactly of this form). Then
    ``w = (R^T L - I)^T u``, and the rigid translation makes the product exact at ``centre``,
    which the eddy map keeps in place. A rigid ``A`` gives ``w = 0``.
    """
    a = np.asarray(transform, float)
    u = np.asarray(u, float) / np.linalg.norm(u)
    linear = a[:3, :3]
    p1 = np.cross(u, [1.0, 0.0, 0.0] if abs(u[0]) < 0.9 else [0.0, 1.0, 0.0])
    p1 /= np.linalg.norm(p1)
    p2 = np.cross(u, p1)
    inv_t = np.linalg.inv(linear).T
    q1, q2 = inv_t @ p1, inv_t @ p2
    r = _polar_rotation(np.column_stack([q1, q2, np.cross(q1, q2)]) @ np.column_stack([p1, p2, u]).T)
    w = u @ (r.T @ linear - np.eye(3))
    rigid = np.eye(4)
    rigid[:3, :3] = r
    rigid[:3, 3] = linear @ centre + a[:3, 3] - r @ centre
    return rigid, w


def eddy_report(translations: np.ndarray, w: np.ndarray, u: np.ndarray, gradients_world: np.ndarray,
                dw_index: np.ndarray, points: np.ndarray, centre: np.ndarray) -> dict:
    """Separate the eddy shift from head translation, and measure each volume's eddy displacement.

    Parameters
    ----------
    translations : ndarray, (N, 3)
        Rigid translation of the grid centre of every volume (mm), as estimated.
    w : ndarray, (N, 3)
        Eddy scale/shear terms of every volume (0 for b=0 volumes).
    u : ndarray, (3,)
        Phase-encoding axis, world unit vector.
    gradients_world : ndarray, (N, 3)
        Applied gradient directions, world axes (0 for b=0).
    dw_index : ndarray of int
        The diffusion-weighted volumes.
    points : ndarray, (P, 3)
        World positions (mm) where the displacement is measured (e.g. brain voxel centres).
    centre : ndarray, (3,)

    Returns
    -------
    dict
        ``head_translation_mm`` (N, 3): the translations with the eddy shift removed;
        ``eddy_shift_mm`` (N,), ``eddy_displacement_mm`` (N,): root-mean-square over
        ``points`` of the whole eddy displacement ``s + w · (x - c)``; ``mean_eddy_mm``,
        ``max_eddy_mm`` (over the diffusion-weighted volumes); ``eddy_shift_separated``
        (False when there are too few volumes: then every shift counts as head motion).
    """
    n = len(translations)
    head = np.array(translations, float)
    shift = np.zeros(n)
    dw_index = np.asarray(dw_index, int)
    separated = dw_index.size >= MIN_VOLUMES_FOR_SEPARATION
    if separated:
        along = head[dw_index] @ u
        design = np.column_stack([np.ones(dw_index.size), gradients_world[dw_index]])
        coef, *_ = np.linalg.lstsq(design, along, rcond=None)
        shift[dw_index] = gradients_world[dw_index] @ coef[1:]
        head[dw_index] -= np.outer(shift[dw_index], u)
    rel = np.asarray(points, float) - np.asarray(centre, float)
    displacement = np.zeros(n)
    for i in dw_index:
        d = shift[i] + rel @ w[i]
        displacement[i] = float(np.sqrt(np.mean(d ** 2))) if d.size else abs(shift[i])
    dw_disp = displacement[dw_index] if dw_index.size else np.zeros(1)
    return {"head_translation_mm": head, "eddy_shift_mm": shift, "eddy_displacement_mm": displacement,
            "mean_eddy_mm": float(dw_disp.mean()), "max_eddy_mm": float(dw_disp.max()),
            "eddy_shift_separated": bool(separated)}
