"""``--write-graph``: the subject workflow drawn as dot, PNG and SVG (colored and flat)."""

import shutil

import pytest

from csttool_nipype.execution import write_graphs
from csttool_nipype.workflows.base import DWIInputs, init_subject_wf


def _subject_wf(tmp_path):
    (tmp_path / "sub-01_dwi.nii.gz").write_bytes(b"")
    return init_subject_wf("01", DWIInputs(nifti=str(tmp_path / "sub-01_dwi.nii.gz")), str(tmp_path / "out"))


def test_without_graphviz_the_dot_files_are_written_and_the_fix_is_named(tmp_path, monkeypatch, caplog):
    empty = tmp_path / "no-tools"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))   # no `dot` on PATH
    files = write_graphs(_subject_wf(tmp_path), tmp_path / "figures")
    names = {p.name for p in files}
    assert {"workflow_colored.dot", "workflow_flat.dot"} <= names
    assert not any(n.endswith((".png", ".svg")) for n in names)
    text = (tmp_path / "figures" / "workflow_colored.dot").read_text()
    assert "digraph" in text and "dwi_import" in text and "fit_tensor" in text
    assert any("install Graphviz" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed (apt-get install graphviz)")
def test_with_graphviz_png_and_svg_of_both_views(tmp_path):
    write_graphs(_subject_wf(tmp_path), tmp_path / "figures")
    for style in ("colored", "flat"):
        png = tmp_path / "figures" / f"workflow_{style}.png"
        svg = tmp_path / "figures" / f"workflow_{style}.svg"
        assert png.read_bytes().startswith(b"\x89PNG")
        assert "<svg" in svg.read_text() and "fit_tensor" in svg.read_text()
