"""Workflow failures become one-line reasons; Nipype never writes crash files into the cwd."""

import os

import pytest
from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from csttool_nipype.execution import WorkflowFailed, run_workflow


def _fails(path):
    from csttool_nipype.errors import InputError

    raise InputError(path, "bval count (15) does not match the number of volumes (16)")


def _adds(x):
    return x + 1


def test_node_failure_reports_the_input_error_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wf = pe.Workflow(name="w")
    node = pe.Node(Function(input_names=["path"], output_names=["out"], function=_fails), name="bad")
    node.inputs.path = "/data/sub-01_dwi.nii.gz"
    wf.add_nodes([node])
    with pytest.raises(WorkflowFailed) as info:
        run_workflow(wf, tmp_path / "work", tmp_path / "crash")
    message = str(info.value)
    assert message == "/data/sub-01_dwi.nii.gz: bval count (15) does not match the number of volumes (16)"
    assert "\n" not in message
    assert info.value.crash_files and all(p.parent == tmp_path / "crash" for p in info.value.crash_files)
    assert not [p for p in os.listdir(tmp_path) if p.startswith("crash-")]


def test_successful_workflow_runs(tmp_path):
    wf = pe.Workflow(name="ok")
    node = pe.Node(Function(input_names=["x"], output_names=["y"], function=_adds), name="add")
    node.inputs.x = 41
    wf.add_nodes([node])
    graph = run_workflow(wf, tmp_path / "work", tmp_path / "crash")
    (done,) = list(graph.nodes())
    assert done.result.outputs.y == 42


def test_multiproc_run_freezes_the_heap_only_while_it_runs(tmp_path, monkeypatch):
    """The objects alive before the run are out of the scheduler's garbage collections while
    Nipype runs (MultiProc collects before every pass), and collected normally afterwards."""
    import gc

    from csttool_nipype.config import ExecutionConfig

    seen = []

    def spy(*args, **kwargs):
        seen.append(gc.get_freeze_count())
        return 0

    monkeypatch.setattr(gc, "collect", spy)
    wf = pe.Workflow(name="frozen")
    first = pe.Node(Function(input_names=["x"], output_names=["y"], function=_adds), name="first",
                    run_without_submitting=True)
    second = pe.Node(Function(input_names=["x"], output_names=["y"], function=_adds), name="second")
    first.inputs.x = 1
    wf.connect(first, "y", second, "x")
    run_workflow(wf, tmp_path / "work", tmp_path / "crash", ExecutionConfig(plugin="MultiProc", nprocs=2))
    assert len(seen) >= 2 and all(count > 0 for count in seen[1:])   # [0]: the collection before freezing
    assert gc.get_freeze_count() == 0
