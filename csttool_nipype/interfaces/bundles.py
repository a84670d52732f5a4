"""CST extraction interface: left and right bundles from the CST tractogram (seeded in the capsules)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import File, TraitedSpec, traits

from ..config import CLIP_ENDS, MIDLINE_RULES, PipelineConfig
from .base import StageInterface, VersionedInputSpec, choice, load_mask


def load_rois(rois_json: str) -> dict[str, np.ndarray]:
    """ROI masks from the ``rois.json`` index written by the ROI interface ({name: path})."""
    index = json.loads(Path(rois_json).read_text())
    return {name: load_mask(path) for name, path in index.items()}


_D = PipelineConfig()  # defaults: one source of truth


class _ExtractInputSpec(VersionedInputSpec):
    in_trk = File(exists=True, mandatory=True, desc="tractogram (.trk); the pipeline's is seeded in the capsules")
    in_rois = File(exists=True, mandatory=True, desc="rois.json: {name: mask path} on the DWI grid")
    in_reference = File(exists=True, mandatory=True, desc="image on the DWI grid (e.g. FA)")
    min_length_mm = traits.Float(_D.cst_min_length_mm, usedefault=True, desc="shortest CST streamline, mm")
    min_streamlines = traits.Int(20, usedefault=True, desc="cleaning never goes below this count")
    clip_end = choice(CLIP_ENDS, _D.cst_clip_end,
                      desc="cut each streamline where it first reaches the cortical target ('first') "
                           "or at its last point in it ('last')")
    midline = choice(MIDLINE_RULES, _D.cst_midline,
                     desc="cut a streamline where it crosses the midline above the decussation ('cut') "
                          "or drop it ('reject')")


class _ExtractOutputSpec(TraitedSpec):
    out_left = File(exists=True, desc="left CST, .trk, oriented inferior→superior")
    out_right = File(exists=True, desc="right CST, .trk")
    out_left_density = File(exists=True, desc="streamline count per voxel, left")
    out_right_density = File(exists=True, desc="streamline count per voxel, right")


class ExtractCST(StageInterface):
    """Keep brainstem→sensorimotor-cortex streamlines per side, clean outliers (``science.bundles.extract_cst``).

    Streamlines are cut to run from the brainstem to where they first reach the cortical
    target (``clip_end="first"``): the stretch inside the cortex ribbon, where tensor FA falls
    towards the tracking threshold, is not part of the tract's metrics or profiles (measured on
    the phantom: ``docs/decisions.md``, "science/bundles.py"). The ROI stage's ``midline`` surface
    is the voxel layer just right of the mid-sagittal plane (``midline_layer="right"``),
    so both sides are held to the same rule there.
    """

    input_spec = _ExtractInputSpec
    output_spec = _ExtractOutputSpec

    def _run_interface(self, runtime):
        from ..science.bundles import density_map, extract_cst
        from ..science.streamlines import Packed
        from ..science.trk_io import load_trk, save_trk

        ref = nib.load(self.inputs.in_reference)
        # flattened once (float64 points, lengths) and shared by both sides
        streamlines = Packed.of(load_trk(self.inputs.in_trk))
        rois = load_rois(self.inputs.in_rois)
        cwd = Path(runtime.cwd)
        for side in ("left", "right"):
            bundle = extract_cst(streamlines, rois, ref.affine, side=side, min_length_mm=self.inputs.min_length_mm,
                                 min_streamlines=self.inputs.min_streamlines, clip_end=self.inputs.clip_end,
                                 midline_layer="right", midline=self.inputs.midline)
            self._results[f"out_{side}"] = str(save_trk(bundle, ref, cwd / f"cst_{side}.trk"))
            density = density_map(bundle, ref.shape[:3], ref.affine).astype(np.int32)
            path = cwd / f"cst_{side}_density.nii.gz"
            nib.save(nib.Nifti1Image(density, ref.affine), path)
            self._results[f"out_{side}_density"] = str(path)
        return runtime
