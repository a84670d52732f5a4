"""Preprocessing workflow: denoise → Gibbs unringing → motion correction → brain mask."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..config import PipelineConfig
from ..interfaces.preprocess import BrainMask, Denoise, GibbsUnring, MotionCorrect, PreprocRecord, ProcessingRegion

DWI_FIELDS = ["dwi", "bval", "bvec"]


def init_dwi_preproc_wf(config: PipelineConfig, mem_gb: float = 1.0, omp_nthreads: int = 1,
                        name: str = "dwi_preproc_wf"):
    """Build the DWI preprocessing workflow.

    Order follows common practice (MRtrix/QSIPrep): denoising first, while the noise is
    still independent between voxels; Gibbs unringing next, on the acquired slices;
    motion correction (rigid, to the first b0, b-vectors rotated) last; the brain mask
    is computed on the corrected mean b0. With ``config.preproc_region == "brain"``
    denoising and Gibbs removal work only inside a dilated brain mask of the raw series
    (``processing_region``), which holds everything later stages read.

    Parameters
    ----------
    config : PipelineConfig
        ``denoise_method``, ``gibbs``, ``gibbs_slice_axis``, ``motion_correction``,
        ``b0_threshold``, ``mask_*`` are used.
    mem_gb : float
        Memory estimate of one in-memory copy of the DWI series, for MultiProc.
    omp_nthreads : int
        Threads for the multithreaded nodes (declared as their ``n_procs``).

    Inputs
    ------
    dwi, bval, bvec
        Imported RAS+ series (FSL-convention b-vectors).
    slice_axis
        Acquisition slice axis (used when ``config.gibbs_slice_axis`` is -1).
    metadata
        Import metadata JSON (acquisition parameters), carried into the record.

    Outputs
    -------
    dwi, bval, bvec
        Preprocessed series; b-vectors rotated by motion correction.
    mask, b0
        Brain mask and mean b0 on the DWI grid.
    report
        JSON record of what was done, with mean/max framewise displacement.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=[*DWI_FIELDS, "slice_axis", "metadata"]), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=[*DWI_FIELDS, "mask", "b0", "report"]), name="outputnode")
    b0_thr = config.b0_threshold

    record = pe.Node(
        PreprocRecord(config={
            "denoise_method": config.denoise_method,
            "gibbs": config.gibbs,
            "motion_correction": config.motion_correction,
            "b0_threshold": b0_thr,
        }),
        name="preproc_record",
    )
    wf.connect(inputnode, "metadata", record, "metadata")
    last = (inputnode, "")  # (node, prefix of its dwi/bval/bvec outputs)

    def chain(node):
        nonlocal last
        src, prefix = last
        wf.connect([(src, node, [(f"{prefix}{f}", f"in_{f}") for f in DWI_FIELDS])])
        last = (node, "out_")

    region = None
    if config.preproc_region == "brain" and (config.denoise_method != "none" or config.gibbs):
        region = pe.Node(
            ProcessingRegion(b0_threshold=b0_thr),
            name="processing_region", mem_gb=mem_gb,
        )
        wf.connect([(inputnode, region, [(f, f"in_{f}") for f in DWI_FIELDS])])

    def threaded(node, in_region=True):
        node.inputs.num_threads = omp_nthreads
        node.n_procs = omp_nthreads
        if region is not None and in_region:
            wf.connect(region, "out_mask", node, "in_mask")
        return node

    if config.denoise_method != "none":
        denoise = threaded(pe.Node(Denoise(method=config.denoise_method, b0_threshold=b0_thr,
                                           mppca_patch_stride=config.mppca_patch_stride), name="denoise",
                                   mem_gb=3 * mem_gb))
        chain(denoise)
        wf.connect(denoise, "out_report", record, "denoise_report")
    if config.gibbs:
        gibbs = threaded(pe.Node(GibbsUnring(b0_threshold=b0_thr), name="gibbs_unring", mem_gb=2 * mem_gb))
        if config.gibbs_slice_axis >= 0:
            gibbs.inputs.slice_axis = config.gibbs_slice_axis
        else:
            wf.connect(inputnode, "slice_axis", gibbs, "slice_axis")
        chain(gibbs)
    if config.motion_correction:
        hmc = threaded(pe.Node(MotionCorrect(b0_threshold=b0_thr, eddy_correction=config.eddy_correction),
                               name="motion_correct", mem_gb=2 * mem_gb), in_region=False)
        chain(hmc)
        wf.connect(inputnode, "metadata", hmc, "in_metadata")
        wf.connect(hmc, "out_report", record, "motion_report")

    mask = pe.Node(
        BrainMask(b0_threshold=b0_thr, median_radius=config.mask_median_radius, numpass=config.mask_numpass),
        name="brain_mask", mem_gb=mem_gb,
    )
    preprocessed, prefix = last
    chain(mask)
    wf.connect([
        (preprocessed, outputnode, [(f"{prefix}{f}", f) for f in DWI_FIELDS]),
        (mask, outputnode, [("out_mask", "mask"), ("out_b0", "b0")]),
        (record, outputnode, [("out_report", "report")]),
    ])
    return wf

