"""Workflow wiring: the subject workflow composes the stage workflows the config asks for."""

from csttool_nipype.config import PipelineConfig
from csttool_nipype.workflows.base import DWIInputs, init_subject_wf
from csttool_nipype.workflows.dwi_preproc import init_dwi_preproc_wf


def _node_names(wf):
    return {node.fullname.split(".", 1)[-1] for node in wf._get_all_nodes()}


def test_preproc_nodes_follow_config():
    full = _node_names(init_dwi_preproc_wf(PipelineConfig()))
    assert {"denoise", "gibbs_unring", "motion_correct", "brain_mask"} <= full
    bare = _node_names(init_dwi_preproc_wf(PipelineConfig(denoise_method="none", gibbs=False,
                                                           motion_correction=False)))
    assert "denoise" not in bare and "gibbs_unring" not in bare and "motion_correct" not in bare
    assert "brain_mask" in bare


def test_preproc_order_is_denoise_gibbs_motion_mask():
    wf = init_dwi_preproc_wf(PipelineConfig())
    graph = wf._graph
    by_name = {n.name: n for n in graph.nodes()}
    for a, b in [("denoise", "gibbs_unring"), ("gibbs_unring", "motion_correct"), ("motion_correct", "brain_mask")]:
        assert graph.has_edge(by_name[a], by_name[b]), f"{a} should feed {b}"


def test_subject_workflow_has_every_stage_and_a_datasink(tmp_path):
    (tmp_path / "x.nii.gz").write_bytes(b"")
    wf = init_subject_wf("01", DWIInputs(nifti=str(tmp_path / "x.nii.gz")), str(tmp_path / "out"))
    names = _node_names(wf)
    assert "dwi_import" in names
    assert any(n.endswith("fit_tensor") for n in names)
    assert any(n.endswith("datasink") for n in names)
    assert wf.name == "single_subject_01_wf"


def test_tracking_and_extraction_options_reach_their_nodes(tmp_path):
    from csttool_nipype.workflows.tractography import init_cst_wf, init_tracking_wf

    config = PipelineConfig(tracking_smoothing_mm=2.5, cst_midline="reject", cst_seed_density=2.0)
    track = init_tracking_wf(config).get_node("track")
    assert track.inputs.smoothing_mm == 2.5
    cst_wf = init_cst_wf(config, "01")
    assert cst_wf.get_node("extract_cst").inputs.midline == "reject"
    # the CST is tracked with the same options, seeded in the capsules at its own density
    track_cst = cst_wf.get_node("track_cst")
    assert track_cst.inputs.smoothing_mm == 2.5 and track_cst.inputs.seed_density == 2.0
    assert track_cst.inputs.seed_rois == ["capsule_left", "capsule_right"]
    # both change the config hash (cached results are not reused across them)
    assert len({c.config_hash() for c in (PipelineConfig(), config, PipelineConfig(cst_midline="reject"))}) == 3
    # the subject workflow hands the tensor elements to the tracking node
    (tmp_path / "x.nii.gz").write_bytes(b"")
    wf = init_subject_wf("01", DWIInputs(nifti=str(tmp_path / "x.nii.gz")), str(tmp_path / "out"), config=config)
    edges = [(u.fullname, v.fullname, d) for u, v, d in wf._graph.edges(data=True)]
    assert any(u.endswith("tensor_wf") and v.endswith("tracking_wf") and
               ("outputnode.tensor", "inputnode.tensor") in d["connect"] for u, v, d in edges)
    # ... and the tracking node reads it only when it smooths
    def track_inputs(cfg):
        wf = init_tracking_wf(cfg)
        return {dst for _, v, d in wf._graph.edges(data=True) if v.name == "track" for _, dst in d["connect"]}

    assert "in_tensor" in track_inputs(config)
    assert "in_tensor" not in track_inputs(PipelineConfig())
