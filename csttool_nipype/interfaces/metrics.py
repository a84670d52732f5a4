"""CST metrics interface: per-side summary numbers, along-tract profiles, QC flags."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import File, Str, TraitedSpec, isdefined, traits

from ..config import METRICS_WEIGHTINGS, PipelineConfig
from ..science.coverage import PARTIAL_COVERAGE_FLAG
from .base import StageInterface, VersionedInputSpec, choice, write_json

SCALARS = ("fa", "md", "rd", "ad")

LOGGER = logging.getLogger(__name__)


_D = PipelineConfig()  # defaults: one source of truth


class _MetricsInputSpec(VersionedInputSpec):
    subject = Str(mandatory=True)
    session = Str()
    in_left = File(exists=True, mandatory=True, desc="left CST .trk (RAS+ mm)")
    in_right = File(exists=True, mandatory=True, desc="right CST .trk")
    in_fa = File(exists=True, mandatory=True)
    in_md = File(exists=True, mandatory=True)
    in_rd = File(exists=True, mandatory=True)
    in_ad = File(exists=True, mandatory=True)
    in_registration_quality = File(exists=True, desc="JSON with the registration's quality numbers")
    in_coverage = File(exists=True, desc="JSON from the ROI stage: which ROIs the image covers")
    in_mni_z = File(exists=True, desc="MNI z (mm) of every voxel of the FA grid: profiles are anchored between "
                                      "two MNI levels (science.profiles.resample_between_levels)")
    in_priors = File(exists=True, desc="priors.json {side: path}: the CST probability map of each side on the FA "
                                       "grid, which weighs the profile samples (science.profiles.prior_weights)")
    n_nodes = traits.Int(100, usedefault=True)
    min_streamlines = traits.Int(_D.min_streamlines, usedefault=True, desc="fewer streamlines on a side raises a flag")
    min_registration_dice = traits.Float(_D.min_registration_dice, usedefault=True, desc="lower WM Dice after warping raises a flag")
    weighting = choice(METRICS_WEIGHTINGS, _D.metrics_weighting,
                       desc="bundle means over voxels weighted by their streamline count ('streamlines', "
                            "the mean along the tract) or each visited voxel once ('voxel')")


class _MetricsOutputSpec(TraitedSpec):
    out_profiles = File(exists=True, desc="long TSV: subject, session, side, node, metric, value")
    out_summary = File(exists=True, desc="one-row TSV: per-side metrics, laterality, flags")
    out_json = File(exists=True, desc="the summary row as JSON")
    out_record = File(exists=True, desc="JSON for the summary and profile sidecars: the covered extent and "
                                        "the profile definition")


class CSTMetrics(StageInterface):
    """Metrics of both CSTs (``science.profiles``).

    Bundle means (FA, MD, RD, AD) are streamline-weighted by default (each voxel counted
    once per streamline through it, the mean along the tract); a side without streamlines
    keeps its summary columns (count 0, volume 0, means NaN) and NaN profile rows, and a
    field of view that misses the CST ROIs raises the ``cst_not_covered`` flag with a
    warning that starts "CST not covered".
    """

    input_spec = _MetricsInputSpec
    output_spec = _MetricsOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        from ..science.profiles import bundle_metrics, core_means, profiles_table, summary_row, tract_profiles
        from ..science.trk_io import load_trk

        ref = nib.load(self.inputs.in_fa)
        maps = {m: np.asarray(nib.load(getattr(self.inputs, f"in_{m}")).dataobj, np.float32) for m in SCALARS}
        metrics, profiles = {}, {}
        n_nodes = int(self.inputs.n_nodes)
        coverage = self._optional_json("in_coverage") or {}
        extent = coverage.get("extent", {})
        missing = extent.get("missing_length_mm", {}) if coverage.get("partial") else {}
        mni_z = (np.asarray(nib.load(self.inputs.in_mni_z).dataobj, np.float32)
                 if isdefined(self.inputs.in_mni_z) else None)
        priors = {side: np.asarray(nib.load(path).dataobj, np.float32)
                  for side, path in (self._optional_json("in_priors") or {}).items()}
        for side in ("left", "right"):
            bundle = load_trk(getattr(self.inputs, f"in_{side}"))
            metrics[side] = bundle_metrics(bundle, maps, ref.affine, weighting=self.inputs.weighting)
            if len(bundle):  # oriented, resampled and weighted once for the four maps
                profiles[side] = tract_profiles(bundle, {m: maps[m] for m in SCALARS}, ref.affine, n_nodes,
                                                missing_length_mm=float(missing.get(side, 0.0)), mni_z=mni_z,
                                                prior=priors.get(side))
            else:  # an empty side keeps its rows (all NaN), so every table has the same shape
                profiles[side] = {m: np.full(n_nodes, np.nan) for m in SCALARS}
            metrics[side].update(core_means(profiles[side]))
        flags = quality_flags(self._optional_json("in_registration_quality"), coverage,
                              self.inputs.min_registration_dice)
        if "cst_not_covered" in flags:
            LOGGER.warning("CST not covered: %s; the summary row is written with %d/%d streamlines "
                           "(left/right) and flag cst_not_covered", flags["cst_not_covered"],
                           metrics["left"]["streamline_count"], metrics["right"]["streamline_count"])
        for side in ("left", "right"):
            if not metrics[side]["streamline_count"]:
                LOGGER.warning("no %s CST streamlines: its metrics and profiles are empty (NaN)", side)
        session = self.inputs.session if isdefined(self.inputs.session) else ""
        row = summary_row(self.inputs.subject, metrics["left"], metrics["right"], flags,
                          min_streamlines=self.inputs.min_streamlines, extent=extent)
        row = {"subject": row.pop("subject"), "session": session, **row}
        table = profiles_table(self.inputs.subject, profiles)
        table.insert(1, "session", session)
        cwd = Path(runtime.cwd)
        table.to_csv(cwd / "tractprofile.tsv", sep="\t", index=False, float_format="%.6g")
        pd.DataFrame([row]).to_csv(cwd / "summary.tsv", sep="\t", index=False, float_format="%.6g")
        self._results["out_profiles"] = str(cwd / "tractprofile.tsv")
        self._results["out_summary"] = str(cwd / "summary.tsv")
        self._results["out_json"] = write_json(row, cwd / "summary.json")
        record = {**coverage_record(coverage, profiles),
                  **profile_definition(n_nodes, anchored=mni_z is not None, atlas_weighted=bool(priors))}
        self._results["out_record"] = write_json(record, cwd / "record.json")
        return runtime

    def _optional_json(self, name):
        value = getattr(self.inputs, name)
        return json.loads(Path(value).read_text()) if isdefined(value) else None


def coverage_record(coverage: dict, profiles: dict) -> dict:
    """Sidecar keys of the summary and profiles: what of the CST the field of view holds.

    ``CoveredExtent``: ``MNIzRangeMM`` (imaged on both sides), ``TemplateShare`` (of the
    template CST's length), ``Partial``, ``NotCovered``; ``ProfileNodesCovered``: per side
    the first and last node with an FA value (None when none).
    """
    extent = coverage.get("extent", {})

    def number(value):
        return float(value) if value is not None and np.isfinite(value) else None

    nodes = {}
    for side, per_metric in profiles.items():
        ok = np.flatnonzero(np.isfinite(per_metric["fa"]))
        nodes[side] = [int(ok[0]), int(ok[-1])] if ok.size else None
    return {"CoveredExtent": {"MNIzRangeMM": [number(extent.get("z_min_mm")), number(extent.get("z_max_mm"))],
                              "TemplateShare": number(extent.get("share")),
                              "Partial": bool(coverage.get("partial", False)),
                              "NotCovered": not coverage.get("covered", True)},
            "ProfileNodesCovered": nodes}


def profile_definition(n_nodes: int, *, anchored: bool, atlas_weighted: bool) -> dict:
    """Sidecar key ``ProfileDefinition``: where a profile's nodes lie and how each node's samples weigh."""
    from ..science.profiles import PRIOR_WEIGHT_FLOOR, PROFILE_END_Z_MM, PROFILE_START_Z_MM

    span = (f"each streamline's stretch between the subject-space surfaces of MNI z = {PROFILE_START_Z_MM:g} and "
            f"{PROFILE_END_Z_MM:g} mm" if anchored else "each whole streamline")
    weights = (f"the Juelich CST probability of the side at the node, at least {PRIOR_WEIGHT_FLOOR:g}" if atlas_weighted
               else "Gaussian in the Mahalanobis distance of the node from the bundle's node cloud (AFQ)")
    return {"ProfileDefinition": {"Nodes": f"{int(n_nodes)} equidistant nodes of {span}; node 0 is the inferior end",
                                  "SampleWeights": f"mean over streamlines weighted by {weights}",
                                  "Sampling": "trilinear"}}


def quality_flags(registration: dict | None, coverage: dict | None, min_dice: float) -> dict[str, str]:
    """Flags raised upstream of the metrics: poor registration, ROIs outside the image
    (``cst_not_covered``), a field of view that stops above the medulla (``partial_coverage``)."""
    flags = {}
    if registration:
        dice = registration.get("wm_dice")
        if dice is not None and np.isfinite(dice) and dice < min_dice:
            flags["poor_registration"] = f"white-matter Dice after registration {dice:.2f} < {min_dice:.2f}"
    if coverage and not coverage.get("covered", True):
        flags["cst_not_covered"] = coverage.get("reason", "the image does not cover the CST ROIs")
    elif coverage and coverage.get("partial"):
        flags[PARTIAL_COVERAGE_FLAG] = coverage.get("partial_reason", "the field of view holds part of the CST")
    return flags
