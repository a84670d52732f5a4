"""Every node of the subject workflow maps to a pipeline stage (config.STAGES) for the live display,
and the stage tracker turns Nipype's start/end callbacks into the line the display shows."""

from csttool_nipype.config import STAGES, PipelineConfig
from csttool_nipype.run import StageTracker
from csttool_nipype.workflows.stages import STAGE_ORDER, stage_of_node
from csttool_nipype.workflows.base import DWIInputs, init_subject_wf


def _nodes(tmp_path):
    (tmp_path / "dwi.nii.gz").write_bytes(b"")   # the workflow is only built, never run
    wf = init_subject_wf("sub-01", DWIInputs(nifti=str(tmp_path / "dwi.nii.gz")), str(tmp_path), PipelineConfig())
    return {node.fullname: node for node in wf._get_all_nodes()}


def test_every_node_of_the_full_workflow_has_a_stage(tmp_path):
    nodes = _nodes(tmp_path)
    stages = {name: stage_of_node(name) for name in nodes}
    assert all(stages.values()), [n for n, s in stages.items() if not s]
    # the processing nodes name every configured stage; "outputs" is the derivatives writer
    assert {s for s in stages.values()} == set(STAGE_ORDER) == {*STAGES, "outputs"}
    assert stages[next(n for n in nodes if n.endswith(".denoise"))] == "preprocess"
    assert stages[next(n for n in nodes if n.endswith(".cst_metrics"))] == "metrics"
    assert stages[next(n for n in nodes if n.endswith(".extract_cst"))] == "cst"


def test_tracker_names_running_stages_in_pipeline_order(tmp_path):
    nodes = _nodes(tmp_path)
    node = {name.rsplit(".", 1)[-1]: n for name, n in nodes.items()}
    lines = []
    track = StageTracker(lines.append)
    track(node["denoise"], "start")
    track(node["denoise"], "end")            # between nodes the last line stays
    track(node["track"], "start")            # MultiProc: tracking and registration side by side
    track(node["register_mni"], "start")
    track(node["track"], "end")
    track(node["register_mni"], "exception")
    assert lines == ["preprocess (denoise)", "track (track)", "register, track", "register (register_mni)"]
