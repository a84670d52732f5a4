"""Registration-to-MNI and atlas-ROI interfaces."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import Directory, File, TraitedSpec, traits

from ..config import PipelineConfig
from .base import StageInterface, VersionedInputSpec, load_mask, save_map, write_json


class _RegisterInputSpec(VersionedInputSpec):
    in_fa = File(exists=True, mandatory=True, desc="subject FA")
    in_mask = File(exists=True, mandatory=True, desc="subject brain mask")
    template_resolution_mm = traits.Float(PipelineConfig().template_resolution_mm, usedefault=True,
                                          desc="template grid spacing for SyN (mm)")
    syn = traits.Bool(True, usedefault=True, desc="non-linear (SyN) step after the affine")


class _RegisterOutputSpec(TraitedSpec):
    out_dir = Directory(exists=True, desc="transforms: affine (txt/npy), SyN fields (NIfTI), registration.json")
    out_json = File(exists=True, desc="registration.json inside out_dir (load_registration reads it)")
    out_quality = File(exists=True, desc="JSON: wm_dice, brain_dice, correlation, acceptable")
    out_template_wm = File(exists=True, desc="template white-matter map warped to the subject grid")
    out_qc = File(exists=True, desc="PNG: template WM outline over the subject FA")


class RegisterToMNI(StageInterface):
    """Affine + SyN registration of the subject FA to the MNI template (``science.registration``)."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        from ..reports.figures import registration_qc_png
        from ..science.registration import register_to_mni
        from ..science.templates import load_template
        from ..science.transforms import save_registration, warp_to_subject

        fa_img = nib.load(self.inputs.in_fa)
        fa = np.asarray(fa_img.dataobj, np.float32)
        mask = load_mask(self.inputs.in_mask)
        result = register_to_mni(fa, mask, fa_img.affine, template_resolution_mm=self.inputs.template_resolution_mm,
                                 syn=self.inputs.syn)
        cwd = Path(runtime.cwd)
        paths = save_registration(result, cwd / "registration")
        template = load_template(self.inputs.template_resolution_mm)
        wm = warp_to_subject(template.wm, template.affine, result, fa.shape, fa_img.affine).astype(np.float32)
        nib.save(nib.Nifti1Image(wm, fa_img.affine), cwd / "template_wm.nii.gz")
        self._results["out_dir"] = str(cwd / "registration")
        self._results["out_json"] = str(paths["json"])
        self._results["out_quality"] = write_json(result.quality, cwd / "quality.json")
        self._results["out_template_wm"] = str(cwd / "template_wm.nii.gz")
        self._results["out_qc"] = str(registration_qc_png(fa, fa_img.affine, wm, cwd / "registration_qc.png",
                                                          title="Template white matter on subject FA"))
        return runtime


class _RoisInputSpec(VersionedInputSpec):
    in_registration = File(exists=True, mandatory=True, desc="registration.json")
    in_reference = File(exists=True, mandatory=True, desc="image on the subject DWI grid (FA)")
    in_mask = File(exists=True, mandatory=True, desc="brain mask (for coverage)")


class _RoisOutputSpec(TraitedSpec):
    out_rois = File(exists=True, desc="rois.json: {name: mask path}")
    out_labels = File(exists=True, desc="one label image of the ROIs (for figures)")
    out_coverage = File(exists=True, desc="JSON: which ROIs the image covers ('covered', 'reason')")
    out_mni_z = File(exists=True, desc="MNI z (mm) of every voxel of the subject grid (NaN beyond the registration)")
    out_priors = File(exists=True, desc="priors.json: {side: path} of the Juelich CST probability maps on the subject grid")


#: ROI name -> label value in the label image (for figures and BIDS dseg output).
ROI_LABELS = {"brainstem": 1, "precentral_left": 2, "precentral_right": 3, "capsule_left": 4, "capsule_right": 5,
              "peduncle_left": 6, "peduncle_right": 7, "midline": 8, "cortex_left": 9, "cortex_right": 10,
              "thalamus": 11}


class CSTRois(StageInterface):
    """Warp the atlas ROIs to the subject (``science.rois.cst_rois``) and check coverage.

    When the field of view stops above the medulla (``partial`` coverage), ``rois.json``
    also names ``cst_start``: where the CST starts (``science.coverage.start_roi``).
    ``mni_z.nii`` holds the MNI z (mm) of every voxel, which anchors the CST profiles
    (``science.profiles.resample_between_levels``); ``priors.json`` names the Juelich CST
    probability map of each side on the subject grid, which weighs the profile samples
    (``science.profiles.prior_weights``).
    """

    input_spec = _RoisInputSpec
    output_spec = _RoisOutputSpec

    def _run_interface(self, runtime):
        from ..science.transforms import load_registration
        from ..science.coverage import interior, start_roi
        from ..science.rois import THRESHOLDS, coverage, cst_rois

        ref = nib.load(self.inputs.in_reference)
        mask = load_mask(self.inputs.in_mask)
        result = load_registration(self.inputs.in_registration)
        rois = cst_rois(result, ref.shape[:3], ref.affine, mask=mask)
        covered = coverage(rois, mask)
        if covered["partial"]:
            band = 2 * float(np.max(ref.header.get_zooms()[:3]))
            rois["cst_start"] = start_roi(rois, rois.mni_z, covered["extent"]["z_min_mm"], band, rois.priors,
                                          prior_threshold=THRESHOLDS["cst"]) & interior(mask)
        cwd = Path(runtime.cwd)
        index, labels = {}, np.zeros(ref.shape[:3], np.uint8)
        for name, roi in rois.items():
            path = cwd / f"roi_{name}.nii.gz"
            nib.save(nib.Nifti1Image(roi.astype(np.uint8), ref.affine), path)
            index[name] = str(path)
            if name in ROI_LABELS:
                labels[roi & (labels == 0)] = ROI_LABELS[name]
        nib.save(nib.Nifti1Image(labels, ref.affine), cwd / "roi_labels.nii.gz")
        self._results["out_rois"] = write_json(index, cwd / "rois.json")
        self._results["out_labels"] = str(cwd / "roi_labels.nii.gz")
        self._results["out_coverage"] = write_json(covered, cwd / "coverage.json")
        self._results["out_mni_z"] = save_map(np.asarray(rois.mni_z, np.float32), ref.affine, cwd, "mni_z")
        priors = {side: save_map(np.asarray(rois.priors[f"cst_prior_{side}"], np.float32), ref.affine, cwd,
                                 f"prior_cst_{side}") for side in ("left", "right")}
        self._results["out_priors"] = write_json(priors, cwd / "priors.json")
        return runtime
