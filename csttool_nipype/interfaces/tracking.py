"""Tractography interface: whole-brain, or seeded in atlas ROIs (the CST)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import File, TraitedSpec, isdefined, traits

from ..config import B0_THRESHOLD, TRACKING_METHODS, PipelineConfig
from .base import StageInterface, VersionedInputSpec, choice, load_mask


_D = PipelineConfig()  # defaults: one source of truth


class _TrackInputSpec(VersionedInputSpec):
    in_fa = File(exists=True, mandatory=True, desc="FA map")
    in_v1 = File(exists=True, mandatory=True, desc="principal eigenvector, voxel axes (X,Y,Z,3)")
    in_tensor = File(exists=True, desc="tensor elements Dxx,Dxy,Dyy,Dxz,Dyz,Dzz, voxel axes (X,Y,Z,6); "
                                       "needed when smoothing_mm > 0 (deterministic method)")
    in_mask = File(exists=True, mandatory=True, desc="brain mask")
    in_rois = File(exists=True, desc="rois.json ({name: mask path}); with seed_rois, where to seed")
    seed_rois = traits.List(traits.Str, desc="seed only in these ROIs of in_rois (their union); "
                                             "default: the whole brain")
    in_dwi = File(exists=True, desc="DWI (probabilistic method only)")
    in_bval = File(exists=True)
    in_bvec = File(exists=True)
    b0_threshold = traits.Float(B0_THRESHOLD, usedefault=True, desc="b ≤ this counts as b0 (s/mm²)")
    method = choice(TRACKING_METHODS, _D.tracking_method)
    seed_density = traits.Float(_D.seed_density, usedefault=True, desc="seeds per mm³ of the seed region")
    step_size_mm = traits.Float(_D.step_size_mm, usedefault=True, desc="step length, mm")
    fa_threshold = traits.Float(_D.fa_threshold, usedefault=True, desc="stop (and seed) where FA is at or below this")
    max_angle_deg = traits.Float(_D.max_angle_deg, usedefault=True, desc="largest turn per step, degrees")
    smoothing_mm = traits.Float(_D.tracking_smoothing_mm, usedefault=True,
                                desc="Gaussian sigma (mm) of the tensor field tracked (deterministic); 0: none")
    min_length_mm = traits.Float(_D.min_length_mm, usedefault=True)
    max_length_mm = traits.Float(_D.max_length_mm, usedefault=True)
    seed = traits.Int(_D.seed, usedefault=True, desc="RNG seed (bit-identical reruns)")
    num_threads = traits.Int(1, usedefault=True, nohash=True,
                             desc="processes to track in (never changes the result: seeds are tracked "
                                  "independently and joined in seed order)")


class _TrackOutputSpec(TraitedSpec):
    out_trk = File(exists=True, desc="whole-brain tractogram, .trk, RAS+ mm")
    n_streamlines = traits.Int()


class Track(StageInterface):
    """Tractography (``science.tracking.track``): whole-brain, or seeded in ROIs (``seed_rois``)."""

    input_spec = _TrackInputSpec
    output_spec = _TrackOutputSpec

    def _run_interface(self, runtime):
        from ..science.tracking import seeds_per_voxel_for_density, smoothed_tensor_field, track
        from ..science.trk_io import save_trk

        fa_img = nib.load(self.inputs.in_fa)
        fa = np.asarray(fa_img.dataobj, np.float32)
        v1 = np.asarray(nib.load(self.inputs.in_v1).dataobj, np.float32)
        mask = load_mask(self.inputs.in_mask)
        extra = {}
        if isdefined(self.inputs.seed_rois) and self.inputs.seed_rois:
            from .bundles import load_rois

            if not isdefined(self.inputs.in_rois):
                raise ValueError("seed_rois needs in_rois")
            rois = load_rois(self.inputs.in_rois)
            extra["seed_mask"] = np.zeros(mask.shape, bool)
            for name in self.inputs.seed_rois:
                if name in rois:  # an ROI outside the field of view is absent: no seeds there
                    extra["seed_mask"] |= rois[name]
        if self.inputs.method == "deterministic" and self.inputs.smoothing_mm > 0:
            if not isdefined(self.inputs.in_tensor):
                raise ValueError("tensor-field smoothing needs in_tensor")
            tensor = np.asarray(nib.load(self.inputs.in_tensor).dataobj, np.float64)
            # directions, seeding and stopping from the smoothed field; streamline ends
            # trimmed back to where the fitted FA is above the threshold
            extra["end_fa"] = fa
            fa, v1 = smoothed_tensor_field(tensor, mask, fa_img.affine, self.inputs.smoothing_mm)
        if self.inputs.method == "probabilistic":
            from ..science.dwi_import import load_dwi

            if not all(isdefined(getattr(self.inputs, k)) for k in ("in_dwi", "in_bval", "in_bvec")):
                raise ValueError("probabilistic tracking needs in_dwi, in_bval and in_bvec")
            dwi = load_dwi(self.inputs.in_dwi, self.inputs.in_bval, self.inputs.in_bvec,
                           b0_threshold=self.inputs.b0_threshold)
            extra |= {"data": dwi.data, "bvals": dwi.bvals, "bvecs_voxel": dwi.bvecs_voxel,
                     "b0_threshold": self.inputs.b0_threshold}
        streamlines = track(
            v1, fa, mask, fa_img.affine,
            seeds_per_voxel=seeds_per_voxel_for_density(self.inputs.seed_density, fa_img.affine),
            step_size_mm=self.inputs.step_size_mm, fa_threshold=self.inputs.fa_threshold,
            max_angle_deg=self.inputs.max_angle_deg, min_length_mm=self.inputs.min_length_mm,
            max_length_mm=self.inputs.max_length_mm, method=self.inputs.method, seed=self.inputs.seed,
            n_jobs=max(1, int(self.inputs.num_threads)), **extra,
        )
        out = save_trk(streamlines, fa_img, Path(runtime.cwd) / "tractogram.trk")
        self._results["out_trk"] = str(out)
        self._results["n_streamlines"] = len(streamlines)
        return runtime

