"""BIDS-derivative names and sidecars."""

import json

from csttool_nipype.interfaces.derivatives import DerivativeNames, bids_derivative_name
from csttool_nipype.workflows.outputs import DERIVATIVES, GROUPS


def test_names_follow_bids_entity_order():
    name = bids_derivative_name("01", "dwimap", ".nii.gz", space="dwi", model="tensor", param="fa")
    assert name == "sub-01_space-dwi_model-tensor_param-fa_dwimap.nii.gz"
    assert bids_derivative_name("sub-01", "mask", ".nii.gz", session="pre", desc="brain") == \
        "sub-01_ses-pre_desc-brain_mask.nii.gz"


def test_interface_copies_and_writes_sidecars(tmp_path):
    src = tmp_path / "fa.nii"
    src.write_bytes(b"not really a nifti")
    qc = tmp_path / "qc.png"
    qc.write_bytes(b"png")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"EchoTime": 0.08, "Units": "overridden"}))
    specs = {"fa": {"folder": "dwi", "entities": [("space", "dwi"), ("param", "fa")], "suffix": "dwimap",
                    "sidecar": {"Units": "arbitrary"}},
             "qc": {"folder": "figures", "entities": [("desc", "tensor")], "suffix": "qc", "sidecar": {}}}
    iface = DerivativeNames(fields=["fa", "qc"], subject="sub-01", specs=specs, sidecar_field="fa",
                            sidecar_file=str(meta), source_files=["raw.nii.gz"])
    iface.inputs.fa = str(src)
    iface.inputs.qc = str(qc)
    (tmp_path / "node").mkdir()
    res = iface.run(cwd=str(tmp_path / "node"))
    image, side = res.outputs.dwi
    assert image.endswith("sub-01_space-dwi_param-fa_dwimap.nii.gz")   # .nii published compressed
    import gzip
    assert gzip.open(image).read() == b"not really a nifti"
    assert json.loads(open(side).read()) == {"EchoTime": 0.08, "Units": "arbitrary", "Sources": ["raw.nii.gz"]}
    assert [p.rsplit("/", 1)[1] for p in res.outputs.figures] == ["sub-01_desc-tensor_qc.png"]  # no sidecar


def test_every_named_output_is_in_exactly_one_group():
    grouped = [field for members in GROUPS.values() for field in members]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {field for field, spec in DERIVATIVES.items() if spec[2] is not None}


