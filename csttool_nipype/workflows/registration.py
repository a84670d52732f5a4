"""Registration workflow: subject FA → MNI template, then atlas ROIs back in subject space."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..config import PipelineConfig
from ..interfaces.registration import CSTRois, RegisterToMNI

REGISTRATION_OUTPUTS = ["registration", "registration_json", "quality", "template_wm", "qc", "rois", "roi_labels",
                        "coverage", "mni_z", "priors"]


def init_registration_wf(config: PipelineConfig, name: str = "registration_wf"):
    """Register to MNI and bring the CST ROIs into the subject's DWI grid.

    Inputs
    ------
    fa, mask
        Subject FA and brain mask (DWI grid, RAS+).

    Outputs
    -------
    registration, registration_json
        Folder of transforms and its index (affine MNI→subject world mm, SyN fields).
    quality
        JSON with wm_dice / brain_dice / correlation.
    template_wm, qc
        Template WM on the subject grid; QC figure.
    rois, roi_labels, coverage
        ROI index (rois.json), label image, and whether the image covers the CST ROIs.
    mni_z
        MNI z (mm) of every voxel of the subject grid (anchors the CST profiles).
    priors
        priors.json: the Juelich CST probability map of each side on the subject grid
        (weighs the CST profile samples).
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=["fa", "mask"]), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=REGISTRATION_OUTPUTS), name="outputnode")
    register = pe.Node(RegisterToMNI(template_resolution_mm=config.template_resolution_mm), name="register_mni",
                       mem_gb=2.0)
    rois = pe.Node(CSTRois(), name="cst_rois", mem_gb=2.0)
    wf.connect([
        (inputnode, register, [("fa", "in_fa"), ("mask", "in_mask")]),
        (inputnode, rois, [("fa", "in_reference"), ("mask", "in_mask")]),
        (register, rois, [("out_json", "in_registration")]),
        (register, outputnode, [("out_dir", "registration"), ("out_json", "registration_json"),
                                ("out_quality", "quality"), ("out_template_wm", "template_wm"), ("out_qc", "qc")]),
        (rois, outputnode, [("out_rois", "rois"), ("out_labels", "roi_labels"), ("out_coverage", "coverage"),
                            ("out_mni_z", "mni_z"), ("out_priors", "priors")]),
    ])
    return wf
