"""Per-subject QC report: ``<subject folder>/sub-X[_ses-Y]_report.html``, self-contained.

Everything is read from the subject's derivatives folder (``dwi/``, ``figures/``,
``xfm/``, and, in a batch, ``_done.json`` and ``logs/``); what is missing (stages not
run, a figure that cannot be drawn) is said in the report instead of failing it.
"""

from __future__ import annotations

import csv
import logging
import math
import platform
import time
from pathlib import Path

import numpy as np

from .. import __version__, derivatives
from ..workflows.stages import STAGE_ORDER, stage_of_node
from .methods import SOFTWARE, methods, recorded_run, software_versions
from .render import figure_entry, render, to_float
from .render import read_json as _read_json

LOGGER = logging.getLogger(__name__)

#: Report label of each pipeline stage (:func:`~csttool_nipype.workflows.stages.stage_of_node`).
STAGE_LABELS = {"import": "import", "preprocess": "preprocessing", "tensor": "tensor", "register": "registration + ROIs",
                "track": "tractography", "cst": "CST extraction + metrics", "metrics": "CST extraction + metrics",
                "outputs": "writing outputs", "": "other"}

#: (column stem in the summary TSV, label, unit, display scale)
SUMMARY_METRICS = [("streamline_count", "streamlines", "", 1.0), ("mean_length_mm", "mean length", "mm", 1.0),
                   ("volume_mm3", "volume", "mm³", 1.0), ("fa_mean", "FA mean", "", 1.0),
                   ("fa_std", "FA SD", "", 1.0), ("md_mean", "MD mean", "×10⁻³ mm²/s", 1e3),
                   ("md_std", "MD SD", "×10⁻³ mm²/s", 1e3), ("rd_mean", "RD mean", "×10⁻³ mm²/s", 1e3),
                   ("ad_mean", "AD mean", "×10⁻³ mm²/s", 1e3)]

SIDECAR_FIELDS = [("Manufacturer", "vendor"), ("ManufacturersModelName", "model"),
                  ("MagneticFieldStrength", "field strength (T)"), ("EchoTime", "TE (s)"),
                  ("RepetitionTime", "TR (s)"), ("PhaseEncodingDirection", "phase encoding"),
                  ("SeriesDescription", "series")]



def key_of(subject_dir: Path) -> str:
    """``sub-X`` or ``sub-X/ses-Y`` from a subject (or session) output folder."""
    subject_dir = Path(subject_dir)
    if subject_dir.name.startswith("ses-") and subject_dir.parent.name.startswith("sub-"):
        return f"{subject_dir.parent.name}/{subject_dir.name}"
    return subject_dir.name


def report_name(key: str) -> str:
    """``sub-X_report.html`` or, for a session, ``sub-X_ses-Y_report.html`` (``report`` in the output registry)."""
    subject, _, session = key.partition("/")
    return derivatives.OUTPUTS["report"].name(subject, session or None)


def _one(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    return found[0] if found else None


def _b0_threshold(sidecar: dict) -> float:
    return float(sidecar.get("CsttoolPreprocessing", {}).get("options", {}).get("b0_threshold", 50.0))


#: Report name of a file -> its key in :data:`csttool_nipype.derivatives.OUTPUTS`.
REPORT_FILES = {"dwi": "dwi", "bval": "bval", "mask": "mask", "fa": "fa", "rois": "roi_labels",
                "cst_left": "cst_left", "cst_right": "cst_right", "profiles": "profiles", "summary": "summary",
                "coverage": "coverage", "tensor_qc": "tensor_qc", "registration_qc": "registration_qc"}


def subject_files(subject_dir: Path) -> dict[str, Path | None]:
    """The derivatives a report uses (None when absent), found through the output registry."""
    files = {name: derivatives.find(subject_dir, key) for name, key in REPORT_FILES.items()}
    files["dwi_json"] = derivatives.find(subject_dir, "dwi", sidecar=True)
    transforms = derivatives.find(subject_dir, "registration")
    record = transforms / derivatives.REGISTRATION_RECORD if transforms else None
    files["registration"] = record if record and record.is_file() else None
    return files


# --------------------------------------------------------------------------- sections
def acquisition(files: dict) -> list[tuple[str, str]]:
    """Scanner and sequence facts: sidecar fields, grid, shells, directions."""
    rows = []
    sidecar = _read_json(files["dwi_json"])
    for key, label in SIDECAR_FIELDS:
        if key in sidecar:
            rows.append((label, str(sidecar[key])))
    if files["dwi"]:
        import nibabel as nib

        header = nib.load(str(files["dwi"])).header
        shape, zooms = header.get_data_shape(), header.get_zooms()[:3]
        rows.append(("matrix (voxels × volumes)", " × ".join(str(s) for s in shape)))
        rows.append(("voxel size (mm)", " × ".join(f"{z:.3g}" for z in zooms)))
    if files["bval"]:
        bvals = np.atleast_1d(np.loadtxt(files["bval"]))
        weighted = bvals > _b0_threshold(sidecar)
        values, counts = np.unique(np.where(weighted, np.round(bvals, -1), 0), return_counts=True)
        rows.append(("b-values (s/mm²: volumes)", ", ".join(f"{b:g}: {n}" for b, n in zip(values, counts))))
        rows.append(("diffusion-weighted volumes", str(int(weighted.sum()))))
    source = sidecar.get("csttool_import", {})
    if source:
        rows.append(("stored orientation", str(source.get("original_orientation", ""))))
        rows.append(("source", str(source.get("source", ""))))
        if source.get("dropped_volumes"):
            rows.append(("volumes dropped at import", ", ".join(str(v) for v in source["dropped_volumes"])))
    return rows


def processing(files: dict, config: dict | None, done: dict) -> list[tuple[str, str]]:
    """What was done: options (when known), preprocessing record, registration quality."""
    prep = _read_json(files["dwi_json"]).get("CsttoolPreprocessing", {})
    options = config or prep.get("options", {})   # without the job's options: what preprocessing recorded
    rows = [(k.replace("_", " "), ", ".join(map(str, v)) if isinstance(v, list | tuple) else str(v))
            for k, v in sorted(options.items())]
    config_hash = done.get("config_hash") or (_config_hash(config) if config else "")
    if config_hash:
        rows.append(("config hash", config_hash))
    mean_fd, max_fd = to_float(prep.get("mean_fd_mm")), to_float(prep.get("max_fd_mm"))
    if math.isfinite(mean_fd):
        rows.append(("framewise displacement (mm)", f"mean {mean_fd:.2f}, max {max_fd:.2f}"))
    sigma = to_float((prep.get("denoise") or {}).get("sigma_estimate") if isinstance(prep.get("denoise"), dict)
                     else None)
    if math.isfinite(sigma):
        rows.append(("noise σ estimate (denoising)", f"{sigma:.3g}"))
    quality = _read_json(files["registration"]).get("quality", {})
    if quality:
        rows.append(("registration to MNI", ", ".join(
            f"{k.replace('_', ' ')} {v:.3f}" for k, v in quality.items() if isinstance(v, float))
            + ("" if quality.get("acceptable", True) else " — NOT acceptable")))
    return rows


def _config_hash(config: dict) -> str:
    from ..config import PipelineConfig

    try:
        return PipelineConfig.from_dict(config).config_hash()
    except (TypeError, ValueError):
        return ""


def versions() -> list[tuple[str, str]]:
    """Installed versions: the methods text's packages, Python and matplotlib (the figures)."""
    rows = list(software_versions((*SOFTWARE, "matplotlib")).items())
    return rows[:1] + [("python", platform.python_version())] + rows[1:]


def methods_section(subject_dir: Path, config: dict | None) -> dict:
    """The subject's methods text (``sections``, ``references``) from its options, or ``missing``.

    The options are ``config`` when given, else those recorded in ``_done.json``; the
    software versions are the recorded ones (a batch records them), else the installed ones.
    """
    from ..config import PipelineConfig

    run = recorded_run(subject_dir)
    options = config if config is not None else run["config"]
    if options is None:
        return {"missing": "the run's options are not recorded in this folder (no _done.json with them)"}
    try:
        cfg = PipelineConfig.from_dict(options)
    except (TypeError, ValueError) as exc:
        return {"missing": f"the recorded options are not readable by this version ({exc})"}
    m = methods(cfg, run["versions"], dicom=run["dicom"], dcm2niix_version=run["dcm2niix_version"],
                config_hash=run["config_hash"] or None)
    return {"sections": m.sections, "references": m.references, "missing": ""}


def stage_durations(node_durations: dict | None) -> list[dict]:
    """Seconds per pipeline stage, each with its slowest steps."""
    if not node_durations:
        return []
    stages: dict[str, dict] = {}
    for node, seconds in node_durations.items():
        stage = STAGE_LABELS[stage_of_node(node)]
        entry = stages.setdefault(stage, {"stage": stage, "seconds": 0.0, "steps": []})
        entry["seconds"] += float(seconds)
        entry["steps"].append((node.rsplit(".", 1)[-1], float(seconds)))
    order = [STAGE_LABELS[stage] for stage in (*STAGE_ORDER, "")]
    out = []
    for stage in sorted(stages, key=order.index):
        entry = stages[stage]
        steps = sorted(entry["steps"], key=lambda s: -s[1])
        entry["detail"] = ", ".join(f"{name} {sec:.1f} s" for name, sec in steps[:4] if sec >= 0.05)
        out.append(entry)
    return out


def log_warnings(log_file: Path | None, limit: int = 50) -> list[str]:
    """WARNING/ERROR lines of the subject's log (the last ``limit``)."""
    if not log_file or not Path(log_file).is_file():
        return []
    lines = [line.rstrip() for line in Path(log_file).read_text(errors="replace").splitlines()
             if " WARNING " in line or " ERROR " in line]
    return lines[-limit:]


def read_summary(path: Path | None) -> dict:
    if not path:
        return {}
    with open(path, newline="") as fh:
        return next(csv.DictReader(fh, delimiter="\t"), {})


def metrics_table(summary: dict) -> list[dict]:
    rows = []
    for stem, label, unit, scale in SUMMARY_METRICS:
        if f"{stem}_left" not in summary:
            continue
        left, right = (to_float(summary.get(f"{stem}_{s}")) * scale for s in ("left", "right"))
        rows.append({"label": label, "unit": unit, "left": left, "right": right,
                     "li": to_float(summary.get(f"{stem}_li"))})
    return rows


def extent_text(summary: dict) -> str:
    """The covered extent of the summary row: MNI z range and share of the template CST."""
    from ..science.profiles import COVERAGE_COLUMNS

    z_min, z_max, share = (to_float(summary.get(c)) for c in COVERAGE_COLUMNS)
    if not (math.isfinite(z_min) and math.isfinite(z_max)):
        return ""
    share_text = f", {100 * share:.0f} % of the template tract's length" if math.isfinite(share) else ""
    return f"MNI z = {z_min:.0f} to {z_max:.0f} mm on both sides{share_text}"


def flags(summary: dict) -> list[str]:
    reasons = summary.get("flag_reasons") or ""
    return [r.strip() for r in reasons.split(";") if r.strip()] or [
        f for f in (summary.get("flags") or "").split(";") if f]


# --------------------------------------------------------------------------- figures
def _figure(title: str, caption: str, draw) -> dict:
    return figure_entry(title, caption, draw, LOGGER)


def _raw_and_preprocessed(files: dict):
    """First diffusion-weighted volume of the raw input (if still readable) and of the output."""
    import nibabel as nib

    sidecar = _read_json(files["dwi_json"])
    bvals = np.atleast_1d(np.loadtxt(files["bval"]))
    weighted = bvals > _b0_threshold(sidecar)
    index = int(np.argmax(weighted)) if weighted.any() else 0
    img = nib.as_closest_canonical(nib.load(str(files["dwi"])))
    preproc = np.asarray(img.dataobj[..., index], np.float32)
    raw = None
    source = Path(str(sidecar.get("csttool_import", {}).get("source", "")))
    raw_bval = Path(str(source).replace(".nii.gz", ".bval").replace(".nii", ".bval"))
    if source.is_file() and raw_bval.is_file() and not sidecar.get("csttool_import", {}).get("dropped_volumes"):
        raw_img = nib.as_closest_canonical(nib.load(str(source)))
        raw_b = np.atleast_1d(np.loadtxt(raw_bval))
        if raw_img.shape[:3] == img.shape[:3] and len(raw_b) == len(bvals):
            raw = np.asarray(raw_img.dataobj[..., index], np.float32)
    fd = sidecar.get("CsttoolPreprocessing", {}).get("motion", {}).get("framewise_displacement_mm")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return raw, preproc, zooms, fd, float(bvals[index])


def subject_figures(files: dict) -> list[dict]:
    from . import figures

    out = []
    if files["dwi"] and files["bval"]:
        def draw_preproc():
            raw, preproc, zooms, fd, b = _raw_and_preprocessed(files)
            return figures.preprocessing_figure(raw, preproc, zooms, fd, b)
        out.append(_figure(
            "Preprocessing", "Axial slice of the first diffusion-weighted volume before (raw input, when still "
            "on disk) and after denoising, Gibbs unringing and motion correction, and their difference: it should "
            "look like noise and ringing, without anatomy. Right: framewise displacement per volume (rigid motion "
            "correction).", draw_preproc))
    if files["tensor_qc"]:
        out.append(_figure("Brain mask and colour FA", "FA with the brain mask outlined (top) and colour FA "
                           "(red = left-right, green = anterior-posterior, blue = superior-inferior) in three planes.",
                           lambda: figures.file_data_uri(files["tensor_qc"])))
    if files["registration_qc"]:
        out.append(_figure("Registration to MNI", "Edges of the MNI152 white matter, warped to the subject, drawn "
                           "on the subject's FA: they should follow the white matter, the corpus callosum and the "
                           "brainstem.", lambda: figures.file_data_uri(files["registration_qc"])))
    fa_cache = {}

    def fa():
        if "fa" not in fa_cache:
            fa_cache["fa"] = figures.load_ras(files["fa"])
        return fa_cache["fa"]

    if files["fa"] and files["rois"]:
        def draw_rois():
            data, affine, zooms = fa()
            labels, _, _ = figures.load_ras(files["rois"])
            return figures.roi_figure(np.asarray(data, float), np.asarray(labels, int), zooms, affine)
        out.append(_figure("Atlas ROIs in subject space", "Harvard-Oxford and Juelich ROIs warped from MNI onto the "
                           "subject's FA. The CST is kept where it runs from the brainstem through the same-side "
                           "cerebral peduncle and internal capsule to the precentral gyrus, without crossing the "
                           "midline.", draw_rois))
    if files["fa"] and files["cst_left"] and files["cst_right"]:
        def draw_cst():
            import nibabel as nib

            data, affine, zooms = fa()
            left = nib.streamlines.load(str(files["cst_left"])).streamlines
            right = nib.streamlines.load(str(files["cst_right"])).streamlines
            return figures.cst_figure(np.asarray(data, float), zooms, affine, left, right)
        out.append(_figure("Left and right CST", "Streamlines of each CST (up to 300 per side shown) projected onto "
                           "the plane of an FA slice through the bundles: they should run from the brainstem up "
                           "through the internal capsule and fan out to the motor cortex, each on its own side.",
                           draw_cst))
    if files["profiles"]:
        def draw_profiles():
            import pandas as pd

            return figures.profiles_figure(pd.read_csv(files["profiles"], sep="\t"))
        out.append(_figure("Tract profiles", "FA and MD sampled at 100 nodes along each CST, from the brainstem "
                           "(node 0) to the motor cortex. Left and right are drawn together for comparison; a "
                           "focal dip on one side only points to a lesion (or a tracking problem there).",
                           draw_profiles))
    return out


# --------------------------------------------------------------------------- entry point
def write_subject_report(subject_dir, config: dict | None = None, node_durations: dict | None = None,
                         log_file=None, key: str | None = None) -> Path:
    """Write the subject's self-contained QC report into ``subject_dir`` and return its path.

    Parameters
    ----------
    subject_dir : path
        ``OUT/sub-X`` (or ``OUT/sub-X/ses-Y``, or a batch job's staging folder).
    config : dict, optional
        The pipeline options (``PipelineConfig.to_dict()``); shown when given, and the
        methods text is written from them (default: the options ``_done.json`` recorded).
    node_durations : dict, optional
        Seconds per Nipype node; defaults to what ``_done.json`` recorded.
    log_file : path, optional
        The subject's log (warnings are listed); defaults to ``logs/*.log`` in the folder.
    key : str, optional
        ``sub-X`` or ``sub-X/ses-Y``: title and file name (default: from the folder's name;
        give it for a staging folder).
    """
    subject_dir = Path(subject_dir)
    key = key or key_of(subject_dir)
    done = _read_json(subject_dir / "_done.json")
    if config is None:   # a rebuild from disk: the options the batch recorded
        config = (done.get("result") or {}).get("config")
    node_durations = node_durations or (done.get("result") or {}).get("node_durations_s")
    if log_file is None:
        log_file = _one(subject_dir / "logs", "*.log")
    files = subject_files(subject_dir)
    summary = read_summary(files["summary"])
    coverage = _read_json(files["coverage"])
    stages = stage_durations(node_durations)
    total = done.get("duration_s") or (sum(s["seconds"] for s in stages) if stages else None)
    path = render(
        "subject_report.html.j2", subject_dir / report_name(key), key=key, generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        version=__version__, acquisition=acquisition(files), processing=processing(files, config, done),
        versions=versions(), stages=stages, total_s=total, peak_rss_mb=(done.get("result") or {}).get("peak_rss_mb"),
        flags=flags(summary), warnings=log_warnings(log_file), missing_rois=coverage.get("missing", []),
        coverage_reason=coverage.get("reason") or coverage.get("partial_reason", ""),
        extent=extent_text(summary), metrics=metrics_table(summary),
        figures=subject_figures(files), log_link=f"logs/{Path(log_file).name}" if log_file else "",
        methods=methods_section(subject_dir, config),
    )
    LOGGER.info("subject report: %s", path)
    return path
