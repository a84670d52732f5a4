"""The output registry (csttool_nipype.derivatives): names, sidecars, finding files, the golden list."""

import gzip
import json
from pathlib import Path

import pytest

from csttool_nipype import derivatives
from csttool_nipype.derivatives import OUTPUTS, WORKFLOW_OUTPUTS, find, path
from csttool_nipype.interfaces.derivatives import DerivativeNames
from csttool_nipype.workflows.outputs import GROUPS, STORED

#: Every file of a phantom run (tests/test_cst_phantom.py checks a real run against it).
GOLDEN = Path(__file__).parent / "data" / "golden_outputs_phantom.txt"


def golden_outputs() -> list[str]:
    return [line for line in GOLDEN.read_text().splitlines() if line and not line.startswith("#")]


def test_names_follow_bids_entity_order():
    assert path("OUT/sub-01", "fa", "01") == Path("OUT/sub-01/dwi/sub-01_space-dwi_model-tensor_param-fa_dwimap.nii.gz")
    assert OUTPUTS["mask"].name("sub-01", "pre") == "sub-01_ses-pre_space-dwi_desc-brain_mask.nii.gz"
    assert path("OUT/sub-01/ses-pre", "dwi", "sub-01", "ses-pre", sidecar=True).name == \
        "sub-01_ses-pre_space-dwi_desc-preproc_dwi.json"
    assert path("OUT/sub-01", "report", "sub-01") == Path("OUT/sub-01/sub-01_report.html")
    assert path("OUT/sub-01", "registration", "sub-01") == Path("OUT/sub-01/xfm/registration")


def test_interface_copies_and_writes_sidecars(tmp_path):
    src = tmp_path / "fa.nii"
    src.write_bytes(b"not really a nifti")
    qc = tmp_path / "qc.png"
    qc.write_bytes(b"png")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"EchoTime": 0.08, "Units": "overridden"}))
    iface = DerivativeNames(fields=["fa", "tensor_qc"], subject="sub-01", sidecar_field="fa",
                            sidecar_file=str(meta), source_files=["raw.nii.gz"])
    iface.inputs.fa = str(src)
    iface.inputs.tensor_qc = str(qc)
    (tmp_path / "node").mkdir()
    res = iface.run(cwd=str(tmp_path / "node"))
    image, side = res.outputs.dwi
    assert image.endswith("sub-01_space-dwi_model-tensor_param-fa_dwimap.nii.gz")   # .nii published compressed
    assert gzip.open(image).read() == b"not really a nifti"
    assert json.loads(open(side).read()) == {"EchoTime": 0.08, "Units": "arbitrary", "Sources": ["raw.nii.gz"],
                                             "Description": OUTPUTS["fa"].description}
    assert [p.rsplit("/", 1)[1] for p in res.outputs.figures] == ["sub-01_desc-tensor_qc.png"]  # no sidecar


def test_an_input_with_another_extension_than_the_registrys_is_refused(tmp_path):
    wrong = tmp_path / "qc.svg"
    wrong.write_bytes(b"<svg/>")
    iface = DerivativeNames(fields=["tensor_qc"], subject="sub-01")
    iface.inputs.tensor_qc = str(wrong)
    with pytest.raises(ValueError, match="must be .png, not .svg"):
        iface.run(cwd=str(tmp_path))


def test_every_workflow_file_is_in_exactly_one_group():
    grouped = [field for members in GROUPS.values() for field in members]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {key for key in WORKFLOW_OUTPUTS if not OUTPUTS[key].is_folder}
    assert STORED <= set(grouped)


def test_find_reads_what_path_names_in_any_subject_or_staging_folder(tmp_path):
    for folder, subject, session in ((tmp_path / "sub-01", "sub-01", None),
                                     (tmp_path / "sub-02" / "ses-pre", "sub-02", "ses-pre"),
                                     (tmp_path / "stage", "sub-03", None)):   # a batch's staging folder
        for key in ("summary", "cst_left_density"):
            target = path(folder, key, subject, session)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(key)
            assert find(folder, key) == target
        side = path(folder, "summary", subject, session, sidecar=True)
        side.write_text("{}")
        assert find(folder, "summary", sidecar=True) == side
        assert find(folder, "profiles") is None
        assert find(folder, "registration") is None
    # the right density map is not the left one, however similar the names
    assert find(tmp_path / "sub-01", "cst_right_density") is None


def test_golden_list_is_what_the_registry_names():
    """Every file of the golden phantom run is a registry output (or its sidecar), and every output of a
    run with default stages is in the golden list; the rest is the dataset's own description."""
    golden = set(golden_outputs())
    subject = Path("sub-01")
    full_run = [key for key in OUTPUTS if not key.startswith("import_")]   # --stages import only writes those
    named = set()
    for key in full_run:
        out = OUTPUTS[key]
        if out.is_folder:
            inside = {g for g in golden if g.startswith(f"{path(subject, key, 'sub-01').as_posix()}/")}
            assert derivatives.REGISTRATION_RECORD in {Path(g).name for g in inside}, key
            named |= inside
            continue
        named.add(path(subject, key, "sub-01").as_posix())
        if out.sidecar:
            named.add(path(subject, key, "sub-01", sidecar=True).as_posix())
    dataset = {".bidsignore", "dataset_description.json"}   # csttool_nipype.bids.write_dataset_description
    assert named - golden == set(), "registry outputs missing from the golden list"
    assert golden - named == dataset, "golden files the registry does not name"
