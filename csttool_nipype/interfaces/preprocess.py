"""Preprocessing stage interfaces: denoising, Gibbs unringing, motion correction, brain mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nipype.interfaces.base import File, TraitedSpec, isdefined, traits

from ..config import DENOISE_METHODS, PipelineConfig
from .base import (DWIInputSpec, DWIOutputSpec, StageInterface, ThreadsDWIInputSpec, VersionedInputSpec,
                   choice, load_inputs, load_mask, save_map, save_outputs, write_json)

_D = PipelineConfig()  # defaults: one source of truth


def _replace_data(dwi, data, bvecs_voxel=None):
    from dataclasses import replace

    if bvecs_voxel is None:
        return replace(dwi, data=np.asarray(data, np.float32))
    return replace(dwi, data=np.asarray(data, np.float32), bvecs_voxel=np.asarray(bvecs_voxel, float))


def _optional_mask(path) -> np.ndarray | None:
    return load_mask(path) if isdefined(path) else None


class _RegionThreadsInputSpec(ThreadsDWIInputSpec):
    in_mask = File(exists=True, desc="region to process (processing_region); default: the whole image")


# --------------------------------------------------------------------------- region
class _RegionOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="uint8 mask, DWI grid")


class ProcessingRegion(StageInterface):
    """Dilated brain mask of the raw series: where preprocessing must be right (``science.preprocess.processing_region``)."""

    input_spec = DWIInputSpec
    output_spec = _RegionOutputSpec

    def _run_interface(self, runtime):
        from ..science.preprocess import processing_region

        dwi = load_inputs(self.inputs)
        region = processing_region(dwi.data, dwi.bvals, b0_threshold=self.inputs.b0_threshold)
        self._results["out_mask"] = save_map(region.astype(np.uint8), dwi.affine, runtime.cwd, "processing_region")
        return runtime


# --------------------------------------------------------------------------- denoise
class _DenoiseInputSpec(_RegionThreadsInputSpec):
    method = choice(DENOISE_METHODS, _D.denoise_method)
    mppca_patch_stride = traits.Int(_D.mppca_patch_stride, usedefault=True,
                                    desc="MP-PCA: patch centres on every n-th voxel per axis")


class _DenoiseOutputSpec(DWIOutputSpec):
    out_report = File(exists=True, desc="JSON: method, parameters, noise estimate")


class Denoise(StageInterface):
    """Denoise a DWI series (``science.denoise.denoise``)."""

    input_spec = _DenoiseInputSpec
    output_spec = _DenoiseOutputSpec

    def _run_interface(self, runtime):
        from ..science.denoise import denoise

        dwi = load_inputs(self.inputs)
        data, info = denoise(
            dwi.data, dwi.bvals, dwi.bvecs_voxel, method=self.inputs.method, mask=_optional_mask(self.inputs.in_mask),
            b0_threshold=self.inputs.b0_threshold, workers=self.inputs.num_threads,
            mppca_patch_stride=self.inputs.mppca_patch_stride,
        )
        save_outputs(_replace_data(dwi, data), runtime.cwd, "dwi_denoised", self._results)
        self._results["out_report"] = write_json(info, Path(runtime.cwd) / "denoise.json")
        return runtime


# --------------------------------------------------------------------------- gibbs
class _GibbsInputSpec(_RegionThreadsInputSpec):
    slice_axis = traits.Int(2, usedefault=True, desc="voxel axis across slices (0, 1 or 2)")
    n_points = traits.Int(3, usedefault=True, desc="neighbour points for the sub-voxel shift")
    num_processes = traits.Int(1, usedefault=True, desc="dipy processes (1 avoids spawn)")


class GibbsUnring(StageInterface):
    """Remove Gibbs ringing slice by slice (``science.preprocess.gibbs_unring``)."""

    input_spec = _GibbsInputSpec
    output_spec = DWIOutputSpec

    def _run_interface(self, runtime):
        from ..science.preprocess import gibbs_unring

        dwi = load_inputs(self.inputs)
        data = gibbs_unring(
            dwi.data, slice_axis=self.inputs.slice_axis, n_points=self.inputs.n_points,
            num_processes=self.inputs.num_processes, mask=_optional_mask(self.inputs.in_mask),
            workers=self.inputs.num_threads,
        )
        save_outputs(_replace_data(dwi, data), runtime.cwd, "dwi_unringed", self._results)
        return runtime


# --------------------------------------------------------------------------- motion
class _MotionInputSpec(ThreadsDWIInputSpec):
    in_metadata = File(exists=True, desc="import metadata JSON (sidecar keys and the csttool_import record)")
    eddy_correction = traits.Bool(_D.eddy_correction, usedefault=True,
                                  desc="also correct eddy-current distortion along the phase-encoding axis "
                                       "(needs PhaseEncodingDirection/Axis in the metadata)")


class _MotionOutputSpec(DWIOutputSpec):
    out_transforms = File(exists=True, desc="(N,4,4) world transforms per volume (head motion and eddy), .npy")
    out_report = File(exists=True, desc="JSON: per-volume rotation/translation, framewise displacement, eddy terms")


class MotionCorrect(StageInterface):
    """Motion and eddy-current correction with b-vector rotation (``science.motion.motion_correct``)."""

    input_spec = _MotionInputSpec
    output_spec = _MotionOutputSpec

    def _run_interface(self, runtime):
        import json

        from ..science.eddy import phase_encoding_world
        from ..science.motion import motion_correct

        dwi = load_inputs(self.inputs)
        pe_world = None
        if self.inputs.eddy_correction and isdefined(self.inputs.in_metadata):
            meta = json.loads(Path(self.inputs.in_metadata).read_text())
            pe_world = phase_encoding_world(meta, dwi.affine)   # the metadata names this image's axes
        data, bvecs, transforms, report = motion_correct(
            dwi.data, dwi.affine, dwi.bvals, dwi.bvecs_voxel, b0_threshold=self.inputs.b0_threshold,
            workers=self.inputs.num_threads, pe_world=pe_world,
        )
        if self.inputs.eddy_correction and pe_world is None:
            report["eddy_correction"] = False
            report["eddy_note"] = "no PhaseEncodingDirection/PhaseEncodingAxis in the sidecar: rigid correction only"
        save_outputs(_replace_data(dwi, data, bvecs), runtime.cwd, "dwi_motion", self._results)
        np.save(Path(runtime.cwd) / "motion_transforms.npy", transforms)
        self._results["out_transforms"] = str(Path(runtime.cwd) / "motion_transforms.npy")
        self._results["out_report"] = write_json(report, Path(runtime.cwd) / "motion.json")
        return runtime


# --------------------------------------------------------------------------- mask
class _MaskInputSpec(DWIInputSpec):
    median_radius = traits.Int(_D.mask_median_radius, usedefault=True, desc="median_otsu filter radius (voxels)")
    numpass = traits.Int(_D.mask_numpass, usedefault=True, desc="median_otsu filter passes")


class _MaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="brain mask (uint8), DWI grid")
    out_b0 = File(exists=True, desc="mean b0 (float32), DWI grid")


class BrainMask(StageInterface):
    """Brain mask from the mean b0 (``science.preprocess.brain_mask``)."""

    input_spec = _MaskInputSpec
    output_spec = _MaskOutputSpec

    def _run_interface(self, runtime):
        from ..science.preprocess import brain_mask

        dwi = load_inputs(self.inputs)
        mask, b0 = brain_mask(
            dwi.data, dwi.bvals, b0_threshold=self.inputs.b0_threshold,
            median_radius=self.inputs.median_radius, numpass=self.inputs.numpass,
        )
        self._results["out_mask"] = save_map(mask.astype(np.uint8), dwi.affine, runtime.cwd, "brain_mask")
        self._results["out_b0"] = save_map(b0.astype(np.float32), dwi.affine, runtime.cwd, "mean_b0")
        return runtime


# --------------------------------------------------------------------------- record
class _PreprocRecordInputSpec(VersionedInputSpec):
    config = traits.Dict(mandatory=True, desc="the preprocessing options that were applied")
    metadata = File(exists=True, desc="acquisition metadata JSON from the import (kept at the top level)")
    denoise_report = File(exists=True)
    motion_report = File(exists=True)


class _PreprocRecordOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="JSON: what preprocessing did, including motion summary")


class PreprocRecord(StageInterface):
    """Merge the stage reports into one preprocessing record (JSON)."""

    input_spec = _PreprocRecordInputSpec
    output_spec = _PreprocRecordOutputSpec

    def _run_interface(self, runtime):
        import json

        steps = {"options": dict(self.inputs.config)}
        for key in ("denoise_report", "motion_report"):
            value = getattr(self.inputs, key)
            if isdefined(value):
                steps[key.replace("_report", "")] = json.loads(Path(value).read_text())
        motion = steps.get("motion") or {}
        steps["mean_fd_mm"] = motion.get("mean_fd_mm")
        steps["max_fd_mm"] = motion.get("max_fd_mm")
        record = {}
        if isdefined(self.inputs.metadata):
            record.update(json.loads(Path(self.inputs.metadata).read_text()))
        record["CsttoolPreprocessing"] = steps
        self._results["out_report"] = write_json(record, Path(runtime.cwd) / "preprocessing.json")
        return runtime
