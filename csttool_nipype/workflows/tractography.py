"""Tractography workflows: whole-brain streamlines; the CST tracked from the internal capsules, extracted
per side, and its metrics."""

from __future__ import annotations

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..config import PipelineConfig
from ..interfaces.bundles import ExtractCST
from ..science.bundles import CST_SEED_ROIS
from ..interfaces.metrics import CSTMetrics
from ..interfaces.tracking import Track

CST_OUTPUTS = ["left", "right", "left_density", "right_density"]
METRICS_OUTPUTS = ["profiles", "summary", "summary_json", "metrics_record"]


def init_tracking_wf(config: PipelineConfig, mem_gb: float = 1.0, omp_nthreads: int = 1, name: str = "tracking_wf"):
    """Whole-brain tractography.

    Inputs: ``fa``, ``v1`` (voxel axes), ``tensor`` (six elements, voxel axes; used only with
    tensor-field smoothing), ``mask``, and ``dwi``/``bval``/``bvec`` (probabilistic only).
    Outputs: ``tractogram`` (.trk, RAS+ mm).
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=TRACK_INPUTS), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=["tractogram", "n_streamlines"]), name="outputnode")
    track = _track_node(config, inputnode, wf, "track", config.seed_density, mem_gb)
    # seed blocks tracked in several processes (same result); one core is left to the
    # (single-threaded) MNI registration, which runs at the same time
    track.n_procs = track.inputs.num_threads = max(1, omp_nthreads - 1)
    wf.connect(track, "out_trk", outputnode, "tractogram")
    wf.connect(track, "n_streamlines", outputnode, "n_streamlines")
    return wf


#: Inputs of the tracking nodes (the tensor only with smoothing, the DWI only for probabilistic tracking).
TRACK_INPUTS = ["fa", "v1", "tensor", "mask", "dwi", "bval", "bvec"]


def _track_node(config: PipelineConfig, inputnode, wf, name: str, seed_density: float, mem_gb: float):
    """A :class:`Track` node with the config's tracking options, fed from ``inputnode``'s TRACK_INPUTS."""
    track = pe.Node(Track(method=config.tracking_method, seed_density=seed_density,
                          step_size_mm=config.step_size_mm, fa_threshold=config.fa_threshold,
                          max_angle_deg=config.max_angle_deg, min_length_mm=config.min_length_mm,
                          max_length_mm=config.max_length_mm, smoothing_mm=config.tracking_smoothing_mm,
                          seed=config.seed, b0_threshold=config.b0_threshold),
                    name=name, mem_gb=2 * mem_gb + 1.0)
    wf.connect(inputnode, "fa", track, "in_fa")
    wf.connect(inputnode, "v1", track, "in_v1")
    wf.connect(inputnode, "mask", track, "in_mask")
    if config.tracking_smoothing_mm > 0 and config.tracking_method == "deterministic":
        wf.connect(inputnode, "tensor", track, "in_tensor")
    if config.tracking_method == "probabilistic":
        for field in ("dwi", "bval", "bvec"):
            wf.connect(inputnode, field, track, f"in_{field}")
    return track


def init_cst_wf(config: PipelineConfig, subject: str, session: str | None = None, metrics: bool = True,
                name: str = "cst_wf", mem_gb: float = 1.0, omp_nthreads: int = 1):
    """Track the CST from the internal capsules, extract both sides and (optionally) compute their metrics.

    Tractography is seeded in :data:`~csttool_nipype.science.bundles.CST_SEED_ROIS` at
    ``config.cst_seed_density`` with the whole-brain tracking options.

    Inputs: the tracking inputs (``fa``, ``v1``, ``tensor``, ``mask``, ``dwi``, ``bval``, ``bvec``),
    ``rois`` (rois.json), ``md``/``rd``/``ad``, ``quality``, ``coverage``, ``mni_z`` (MNI z of the
    subject grid, which anchors the profiles), ``priors`` (priors.json: the CST probability
    maps that weigh the profile samples).
    Outputs: ``left``/``right`` (.trk), their density maps, and with ``metrics``: ``profiles``
    (long TSV), ``summary`` (one-row TSV), ``summary_json``, ``metrics_record`` (sidecar keys: the profile definition and
    the covered extent).
    """
    wf = pe.Workflow(name=name)
    fields = TRACK_INPUTS + ["rois", "md", "rd", "ad", "quality", "coverage", "mni_z", "priors"]
    inputnode = pe.Node(IdentityInterface(fields=fields), name="inputnode")
    track = _track_node(config, inputnode, wf, "track_cst", config.cst_seed_density, mem_gb)
    track.inputs.seed_rois = list(CST_SEED_ROIS)
    track.n_procs = track.inputs.num_threads = max(1, omp_nthreads)
    wf.connect(inputnode, "rois", track, "in_rois")
    outputnode = pe.Node(IdentityInterface(fields=CST_OUTPUTS + METRICS_OUTPUTS), name="outputnode")
    extract = pe.Node(ExtractCST(min_length_mm=config.cst_min_length_mm, clip_end=config.cst_clip_end,
                                 midline=config.cst_midline),
                      name="extract_cst", mem_gb=2.0)
    wf.connect([
        (track, extract, [("out_trk", "in_trk")]),
        (inputnode, extract, [("rois", "in_rois"), ("fa", "in_reference")]),
        (extract, outputnode, [(f"out_{k}", k) for k in CST_OUTPUTS]),
    ])
    if metrics:
        node = pe.Node(CSTMetrics(subject=subject, min_streamlines=config.min_streamlines,
                                  min_registration_dice=config.min_registration_dice,
                                  weighting=config.metrics_weighting), name="cst_metrics")
        if session:
            node.inputs.session = session
        wf.connect([
            (extract, node, [("out_left", "in_left"), ("out_right", "in_right")]),
            (inputnode, node, [(m, f"in_{m}") for m in ("fa", "md", "rd", "ad")]
             + [("quality", "in_registration_quality"), ("coverage", "in_coverage"), ("mni_z", "in_mni_z"),
                ("priors", "in_priors")]),
            (node, outputnode, [("out_profiles", "profiles"), ("out_summary", "summary"),
                                ("out_json", "summary_json"), ("out_record", "metrics_record")]),
        ])
    return wf
