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
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

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
    colors = ["#000000"] + [ROI_LABELS.get(i, ("", "#999999"))[1] for i in range(1, 9)]
    cmap = ListedColormap(colors)
    fig = new_figure(13, 3.9)
    axes = fig.subplots(1, len(views))
    vmax = fa_range(fa)
    for ax, (plane, index, what) in zip(axes, views):
        show_map(ax, fa, plane, index, zooms, vmin=0, vmax=vmax)
        lab = plane_slice(labels, plane, index).astype(float)
        ax.imshow(np.ma.masked_where(lab == 0, lab), origin="lower", cmap=cmap, vmin=0, vmax=8, alpha=0.75,
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
