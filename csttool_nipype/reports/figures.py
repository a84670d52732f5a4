"""Per-subject report figures (matplotlib Agg, no pyplot), returned as PNG data URIs.

Display convention, as in the pipeline's own QC figures: maps in RAS voxel order shown
**neurological** (the subject's left on the left of axial and coronal panels; anterior up
in axial panels; superior up in coronal and sagittal panels, anterior on the right of
sagittal panels). Streamlines (world RAS+ mm) are mapped to voxel indices with the
image's affine and drawn projected onto each panel's plane.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

LEFT_COLOR, RIGHT_COLOR = "#e66101", "#1f78b4"
SIDE_COLORS = {"left": LEFT_COLOR, "right": RIGHT_COLOR}

#: Labels of ``*_desc-cstrois_dseg.nii.gz`` (see the sidecar's Description) and their colours.
ROI_LABELS = {
    1: ("brainstem", "#ffd92f"),
    2: ("precentral gyrus L", "#fc8d62"),
    3: ("precentral gyrus R", "#8da0cb"),
    4: ("internal capsule L", "#e31a1c"),
    5: ("internal capsule R", "#1f78b4"),
    6: ("cerebral peduncle L", "#ff7f00"),
    7: ("cerebral peduncle R", "#33a02c"),
    8: ("midline", "#f0f0f0"),
    9: ("postcentral gyrus + SMA L", "#fdd0a2"),
    10: ("postcentral gyrus + SMA R", "#c6dbef"),
    11: ("thalamus (excluded)", "#b15928"),
}

# (plane, axis through which we slice, the two displayed axes, edge letters L, R, B, T)
PLANES = {
    "axial": (2, (0, 1), ("L", "R", "P", "A")),
    "coronal": (1, (0, 2), ("L", "R", "I", "S")),
    "sagittal": (0, (1, 2), ("P", "A", "I", "S")),
}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_data_uri(fig: Figure, dpi: int = 100) -> str:
    """Render ``fig`` to PNG and return it as a ``data:`` URI (base64)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_data_uri(path) -> str:
    """An existing PNG file as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def load_ras(path):
    """``(data, affine, zooms)`` of a NIfTI in RAS voxel order (reoriented, never resampled)."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asanyarray(img.dataobj), img.affine, tuple(float(z) for z in img.header.get_zooms()[:3])


def plane_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """2-D slice ready for ``imshow(origin="lower")``: rows = the plane's vertical axis."""
    axis = PLANES[plane][0]
    return np.swapaxes(np.take(volume, int(index), axis=axis), 0, 1)


def _aspect(zooms, plane: str) -> float:
    h, v = PLANES[plane][1]
    return zooms[v] / zooms[h]


def _letters(ax, plane: str, color: str = "yellow") -> None:
    left, right, bottom, top = PLANES[plane][2]
    from matplotlib import patheffects

    style = dict(transform=ax.transAxes, color=color, fontsize=9, fontweight="bold", ha="center", va="center",
                 path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])
    ax.text(0.03, 0.5, left, **style)
    ax.text(0.97, 0.5, right, **style)
    ax.text(0.5, 0.03, bottom, **style)
    ax.text(0.5, 0.97, top, **style)


def world_mm(affine: np.ndarray, plane: str, index: int, shape) -> float:
    """World coordinate (RAS+ mm) of a slice's centre along the slice's own axis, for titles.

    ``shape`` is the volume's (RAS-ordered) shape; the other two voxel axes are taken at
    their centres. On an oblique grid (a sagittal acquisition tilted 20° towards coronal)
    the coordinate changes across the slice; its centre is what the panel shows.
    """
    import nibabel as nib

    axis = PLANES[plane][0]
    ijk = (np.asarray(shape[:3], float) - 1.0) / 2.0
    ijk[axis] = index
    return float(nib.affines.apply_affine(affine, ijk)[axis])


def show_map(ax, volume, plane: str, index: int, zooms, cmap="gray", vmin=None, vmax=None, **kw):
    image = ax.imshow(plane_slice(volume, plane, index), origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                      aspect=_aspect(zooms, plane), interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    _letters(ax, plane)
    return image


def fa_range(fa: np.ndarray) -> float:
    finite = fa[np.isfinite(fa) & (fa > 0)]
    return float(np.clip(np.percentile(finite, 99.5), 0.5, 1.0)) if finite.size else 1.0


def to_voxels(streamlines, affine: np.ndarray) -> list[np.ndarray]:
    inverse = np.linalg.inv(affine)
    return [np.asarray(s, float) @ inverse[:3, :3].T + inverse[:3, 3] for s in streamlines]


def subsample(streamlines, limit: int = 300) -> list:
    """At most ``limit`` streamlines, evenly spaced in the file's order (deterministic)."""
    n = len(streamlines)
    if n <= limit:
        return list(streamlines)
    return [streamlines[int(i)] for i in np.linspace(0, n - 1, limit)]


def _draw_streamlines(ax, voxel_lines, plane: str, color: str, label: str) -> None:
    from matplotlib.collections import LineCollection

    h, v = PLANES[plane][1]
    segments = [line[:, [h, v]] for line in voxel_lines if len(line) > 1]
    if segments:
        ax.add_collection(LineCollection(segments, colors=color, linewidths=0.5, alpha=0.55, label=label))


# --------------------------------------------------------------------------- subject figures
def preprocessing_figure(raw: np.ndarray | None, preproc: np.ndarray, zooms, fd_mm=None,
                         bvalue: float | None = None) -> str:
    """One diffusion-weighted volume before/after preprocessing, their difference, and motion."""
    k = preproc.shape[2] // 2
    panels = 3 if raw is not None else 1
    fig = new_figure(3.2 * panels + (4.2 if fd_mm is not None else 0), 3.6)
    grid = fig.add_gridspec(1, panels + (1 if fd_mm is not None else 0),
                            width_ratios=[1] * panels + ([1.5] if fd_mm is not None else []))
    vmax = float(np.percentile(preproc[preproc > 0], 99.5)) if np.any(preproc > 0) else 1.0
    label = f"b = {bvalue:g} s/mm²" if bvalue is not None else "DW volume"
    images = [(f"after preprocessing ({label})", preproc, "gray", 0, vmax)]
    if raw is not None:
        diff = raw.astype(float) - preproc.astype(float)
        lim = float(np.percentile(np.abs(diff), 99)) or 1.0
        title = "raw − preprocessed" if np.any(diff) else "raw − preprocessed: 0 (data unchanged)"
        images = [(f"raw input ({label})", raw, "gray", 0, vmax), images[0], (title, diff, "RdBu_r", -lim, lim)]
    for i, (title, vol, cmap, lo, hi) in enumerate(images):
        ax = fig.add_subplot(grid[0, i])
        image = show_map(ax, vol, "axial", k, zooms, cmap=cmap, vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=9)
        if cmap == "RdBu_r":
            fig.colorbar(image, ax=ax, shrink=0.7, label="signal (a.u.)")
    if fd_mm is not None:
        ax = fig.add_subplot(grid[0, -1])
        ax.plot(np.arange(len(fd_mm)), fd_mm, "-o", color="#444444", markersize=2.5, linewidth=1)
        ax.set_xlabel("volume")
        ax.set_ylabel("framewise displacement (mm)")
        ax.set_title(f"head motion: mean {np.mean(fd_mm):.2f} mm, max {np.max(fd_mm):.2f} mm", fontsize=9)
        ax.grid(alpha=0.3)
    return png_data_uri(fig)


def roi_figure(fa: np.ndarray, labels: np.ndarray, zooms, affine) -> str:
    """Atlas ROIs warped to the subject, over FA, through the ROIs that define the CST."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    def centre(values, axis):
        idx = np.argwhere(np.isin(labels, values))
        return int(np.median(idx[:, axis])) if idx.size else labels.shape[axis] // 2

    views = [("axial", centre([2, 3], 2), "precentral gyri"), ("axial", centre([4, 5], 2), "internal capsules"),
             ("coronal", centre([4, 5, 6, 7], 1), "capsules and peduncles"),
             ("sagittal", centre([4, 6], 0), "left CST path")]
    colors = ["#000000"] + [ROI_LABELS.get(i, ("", "#999999"))[1] for i in range(1, max(ROI_LABELS) + 1)]
    cmap = ListedColormap(colors)
    fig = new_figure(13, 3.9)
    axes = fig.subplots(1, len(views))
    vmax = fa_range(fa)
    for ax, (plane, index, what) in zip(axes, views):
        show_map(ax, fa, plane, index, zooms, vmin=0, vmax=vmax)
        lab = plane_slice(labels, plane, index).astype(float)
        ax.imshow(np.ma.masked_where(lab == 0, lab), origin="lower", cmap=cmap, vmin=0, vmax=max(ROI_LABELS), alpha=0.75,
                  aspect=_aspect(zooms, plane), interpolation="nearest")
        ax.set_title(f"{plane} {world_mm(affine, plane, index, fa.shape):.0f} mm: {what}", fontsize=9)
    present = sorted(int(v) for v in np.unique(labels) if int(v) in ROI_LABELS)
    fig.legend(handles=[Patch(color=ROI_LABELS[v][1], label=ROI_LABELS[v][0]) for v in present],
               loc="outside lower center", ncol=min(8, max(1, len(present))), fontsize=8, frameon=False)
    return png_data_uri(fig)


def cst_figure(fa: np.ndarray, zooms, affine, left, right) -> str:
    """Left and right CST streamlines over FA: coronal, axial and one sagittal panel per side."""
    from matplotlib.lines import Line2D

    lines = {side: to_voxels(subsample(sl), affine) for side, sl in (("left", left), ("right", right))}
    points = np.concatenate([np.concatenate(v) for v in lines.values() if v] or [np.zeros((0, 3))])
    if len(points):
        cx, cy, cz = (int(round(c)) for c in np.median(points, axis=0))
    else:
        cx, cy, cz = (s // 2 for s in fa.shape[:3])
    side_x = {side: int(round(np.median(np.concatenate(v)[:, 0]))) if v else cx for side, v in lines.items()}
    views = [("coronal", cy, ("left", "right")), ("axial", cz, ("left", "right")),
             ("sagittal", side_x["left"], ("left",)), ("sagittal", side_x["right"], ("right",))]
    fig = new_figure(14, 4.4)
    axes = fig.subplots(1, len(views))
    vmax = fa_range(fa)
    for ax, (plane, index, sides) in zip(axes, views):
        show_map(ax, fa, plane, index, zooms, vmin=0, vmax=vmax)
        for side in sides:
            _draw_streamlines(ax, lines[side], plane, SIDE_COLORS[side], f"{side} CST")
        shown = " + ".join(f"{s} CST" for s in sides) if len(sides) == 1 else "both CSTs"
        ax.set_title(f"{plane} {world_mm(affine, plane, index, fa.shape):.0f} mm ({shown})", fontsize=9)
        ax.set_xlim(-0.5, plane_slice(fa, plane, index).shape[1] - 0.5)
        ax.set_ylim(-0.5, plane_slice(fa, plane, index).shape[0] - 0.5)
    counts = {side: len(sl) for side, sl in (("left", left), ("right", right))}
    fig.legend(handles=[Line2D([], [], color=SIDE_COLORS[s], lw=2, label=f"{s} CST ({counts[s]} streamlines)")
                        for s in ("left", "right")], loc="outside lower center", ncol=2, frameon=False, fontsize=9)
    return png_data_uri(fig)


def profiles_figure(profiles, metrics=("fa", "md")) -> str:
    """Along-tract profiles of both sides (``profiles``: long table with side/node/metric/value)."""
    fig = new_figure(5.2 * len(metrics), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics):
        scale, unit = metric_scale(metric)
        for side in ("left", "right"):
            rows = profiles[(profiles["metric"] == metric) & (profiles["side"] == side)].sort_values("node")
            if len(rows):
                ax.plot(rows["node"], rows["value"].astype(float) * scale, color=SIDE_COLORS[side], lw=1.8,
                        label=f"{side} CST")
        ax.set_xlabel("node: 0 = inferior (brainstem) … superior (motor cortex)")
        ax.set_ylabel(f"{metric.upper()}{unit}")
        ax.set_title(f"{metric.upper()} along the CST", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return png_data_uri(fig)


def metric_scale(metric: str) -> tuple[float, str]:
    """Display scale and unit suffix: diffusivities in 10⁻³ mm²/s, FA unitless."""
    if metric.lower() in ("md", "rd", "ad"):
        return 1e3, " (×10⁻³ mm²/s)"
    return 1.0, ""


# --------------------------------------------------------------------------- stage QC pictures (PNG files)
def _to_ras(arr: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
    if affine is None:
        return arr
    from ..science.gradients import reorient_array

    out, _ = reorient_array(arr, affine, "RAS")
    return out


def tensor_qc_png(
    fa: np.ndarray,
    color_fa: np.ndarray,
    mask: np.ndarray | None,
    out_png,
    title: str = "",
    affine: np.ndarray | None = None,
) -> Path:
    """Write a QC figure: FA and colour-FA on three orthogonal slices.

    Slices pass through the centre of the mask's bounding box (array centre without a
    mask). Display is **neurological**: the subject's left is on the left of the axial
    and coronal panels; anterior is up in the axial panel, superior is up in the coronal
    and sagittal panels, anterior is on the right of the sagittal panel. The figure says
    so.

    Parameters
    ----------
    fa : ndarray, shape (X, Y, Z)
    color_fa : ndarray, shape (X, Y, Z, 3), values in [0, 1]
    mask : ndarray of bool, shape (X, Y, Z), or None
        Outlined in the FA panels when given.
    out_png : path-like
    title : str
    affine : ndarray, shape (4, 4), optional
        When given, the maps are first reoriented (permute/flip only) to RAS voxel order;
        when None they are assumed to be stored RAS (the package's internal convention).

    Returns
    -------
    Path of the PNG written.
    """
    # Figure + Agg canvas directly (module imports): no pyplot, so the global backend is left alone
    fa = _to_ras(np.asarray(fa, float), affine)
    color_fa = _to_ras(np.asarray(color_fa, float), affine)
    m = None if mask is None else _to_ras(np.asarray(mask, np.uint8), affine).astype(bool)
    if color_fa.shape != fa.shape + (3,):
        raise ValueError(f"color_fa shape {color_fa.shape} does not match FA shape {fa.shape} + (3,)")

    if m is not None and m.any():
        idx = np.argwhere(m)
        centre = ((idx.min(0) + idx.max(0)) // 2).astype(int)
    else:
        centre = (np.asarray(fa.shape) // 2).astype(int)
    cx, cy, cz = (int(c) for c in centre)

    # In RAS voxel order: axis0 = R(+), axis1 = A(+), axis2 = S(+). imshow puts row 0 at
    # the top, so each slice is transposed (rows = second axis) and shown origin="lower".
    def views(vol):
        return [
            ("axial z=%d" % cz, np.swapaxes(vol[:, :, cz], 0, 1), ("L", "R", "P", "A")),
            ("coronal y=%d" % cy, np.swapaxes(vol[:, cy, :], 0, 1), ("L", "R", "I", "S")),
            ("sagittal x=%d" % cx, np.swapaxes(vol[cx, :, :], 0, 1), ("P", "A", "I", "S")),
        ]

    fig = Figure(figsize=(10, 7), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    for col, (name, sl, labels) in enumerate(views(fa)):
        ax = axes[0, col]
        ax.imshow(sl, cmap="gray", vmin=0, vmax=1, origin="lower", interpolation="nearest")
        if m is not None:
            msl = views(m.astype(float))[col][1]
            if msl.any() and not msl.all():
                ax.contour(msl, levels=[0.5], colors="y", linewidths=0.6, origin="lower")
        ax.set_title(f"FA {name}", fontsize=9)
    for col, (name, sl, labels) in enumerate(views(color_fa)):
        ax = axes[1, col]
        ax.imshow(np.clip(sl, 0, 1), origin="lower", interpolation="nearest")
        ax.set_title(f"colour FA {name}", fontsize=9)
    for row in range(2):
        for col, (_, sl, (left, right, bottom, top)) in enumerate(views(fa)):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            kw = dict(transform=ax.transAxes, fontsize=8, color="w",
                      bbox=dict(facecolor="k", alpha=0.5, pad=1, linewidth=0))
            ax.text(0.02, 0.5, left, ha="left", va="center", **kw)
            ax.text(0.98, 0.5, right, ha="right", va="center", **kw)
            ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **kw)
            ax.text(0.5, 0.98, top, ha="center", va="top", **kw)
    heading = (title + "\n" if title else "") + (
        "neurological display (subject's left on the left); colour FA: red = L-R, green = A-P, blue = S-I"
    )
    fig.suptitle(heading, fontsize=10)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    logger.info("tensor_qc_png: wrote %s", out)
    return out


def _world_aligned(image, affine):
    """Resample onto a grid whose axes are world R, A, S (isotropic, finest voxel size).

    A permutation/flip-only affine (no obliquity) with isotropic voxels maps voxel
    centres onto grid points, so the values are then copied exactly.
    """
    import nibabel as nib

    from ..science.templates import resample_grid

    zoom = float(np.sqrt((affine[:3, :3] ** 2).sum(0)).min())
    ijk = np.array(np.meshgrid(*[[0, n - 1] for n in image.shape])).reshape(3, -1).T
    corners = nib.affines.apply_affine(affine, ijk)
    lo, hi = corners.min(0), corners.max(0)
    shape = tuple(int(n) for n in np.floor((hi - lo) / zoom + 1e-6) + 1)
    out_aff = np.diag([zoom, zoom, zoom, 1.0])
    out_aff[:3, 3] = lo
    return resample_grid(image, affine, shape, out_aff, order=1), out_aff


def registration_qc_png(
    fa: np.ndarray,
    affine: np.ndarray,
    template_in_subject: np.ndarray,
    out_png: str | Path,
    *,
    level: float = 0.5,
    title: str | None = None,
) -> Path:
    """Draw the template WM outline over the subject FA in three orthogonal planes.

    Both images are resampled first onto a grid aligned with the world axes (so oblique
    acquisitions show true sagittal, coronal and axial planes, and any voxel order on disk
    shows the same picture), and shown in neurological convention: the subject's left on the left of the coronal and
    axial panels, anterior on the right of the sagittal panel, superior up. Slices pass
    through the centre of mass of the template WM on the subject grid.

    Parameters
    ----------
    fa : ndarray, (X, Y, Z)
        Subject FA (grey background).
    affine : ndarray, (4, 4)
        Voxel-to-world affine of ``fa``.
    template_in_subject : ndarray, (X, Y, Z)
        Template WM fraction warped onto the subject grid (e.g.
        ``warp_to_subject(tpl.wm, tpl.affine, result, fa.shape, affine)`` with ``tpl = load_template()``).
    out_png : path
        Output PNG file (parent folders are created).
    level : float
        Iso-level of the red outline (0.5: the template's WM border).
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``out_png``.
    """
    import nibabel as nib
    from scipy import ndimage

    from ..science.transforms import check_3d, check_affine

    fa = check_3d("fa", fa)
    tws = check_3d("template_in_subject", template_in_subject, fa.shape)
    affine = check_affine(affine)
    fa_r, aff_r = _world_aligned(np.nan_to_num(np.asarray(fa, np.float32)), affine)
    t_r, _ = _world_aligned(np.nan_to_num(np.asarray(tws, np.float32)), affine)
    # crop to the imaged brain and the template (2-voxel margin) so the panels fill the figure
    support = (fa_r > 0) | (t_r > 0.05)
    if support.any():
        ijk = np.argwhere(support)
        lo = np.maximum(ijk.min(0) - 2, 0)
        hi = np.minimum(ijk.max(0) + 3, fa_r.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        fa_r, t_r = fa_r[box], t_r[box]
        aff_r = aff_r @ nib.affines.from_matvec(np.eye(3), lo)
    zooms = np.sqrt((aff_r[:3, :3] ** 2).sum(0))
    if t_r.sum() > 0:
        centre = np.round(ndimage.center_of_mass(t_r)).astype(int)
    else:
        centre = np.array(fa_r.shape) // 2
    centre = np.clip(centre, 0, np.array(fa_r.shape) - 1)
    vmax = float(np.percentile(fa_r[fa_r > 0], 99)) if np.any(fa_r > 0) else 1.0
    world = nib.affines.apply_affine(aff_r, centre)

    # (name, sliced axis, horizontal axis, labels left/right of the panel)
    planes = (("sagittal", 0, 1, ("P", "A")), ("coronal", 1, 0, ("L", "R")), ("axial", 2, 0, ("L", "R")))
    widths = [fa_r.shape[h] * zooms[h] for _, _, h, _ in planes]
    heights = [fa_r.shape[v] * zooms[v] for v in (2, 2, 1)]
    # figure sized so that the tallest panel fills the height (13 in wide)
    fig_h = float(np.clip(13 * 0.98 * max(heights) / sum(widths) / 0.84, 2.5, 8.0))
    fig = Figure(figsize=(13, fig_h), dpi=100, facecolor="black")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, 3, width_ratios=widths, wspace=0.02, left=0.01, right=0.99, bottom=0.02, top=0.86)
    for n, (name, axis, horiz, labels) in enumerate(planes):
        ax = fig.add_subplot(grid[0, n])
        index = [slice(None)] * 3
        index[axis] = int(centre[axis])
        vert = [a for a in range(3) if a not in (axis, horiz)][0]
        # the 2D slice keeps the other two axes in increasing order (horiz < vert):
        # transpose so rows run along the vertical axis
        bg, ov = fa_r[tuple(index)].T, t_r[tuple(index)].T
        extent = (0, bg.shape[1] * zooms[horiz], 0, bg.shape[0] * zooms[vert])
        ax.imshow(bg, cmap="gray", origin="lower", vmin=0, vmax=vmax, extent=extent, interpolation="nearest")
        if ov.max() > level > ov.min():
            ax.contour(ov, levels=[level], colors=["#ff3030"], linewidths=1.0, origin="lower", extent=extent)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_axis_off()
        ax.set_title(f"{name}  {'xyz'[axis]} = {world[axis]:.0f} mm", color="white", fontsize=10)
        for x, text, ha in ((extent[0], labels[0], "left"), (extent[1], labels[1], "right")):
            ax.text(x, extent[3] / 2, text, color="yellow", fontsize=12, va="center", ha=ha, fontweight="bold")
    fig.suptitle(title or "template white matter outline (red) over subject FA", color="white", fontsize=11)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, facecolor=fig.get_facecolor())
    return out_png
