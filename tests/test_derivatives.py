"""BIDS-derivative names and sidecars."""

import json

from csttool_nipype.interfaces.derivatives import DerivativeName, bids_derivative_name


def test_names_follow_bids_entity_order():
    name = bids_derivative_name("01", "dwimap", ".nii.gz", space="dwi", model="tensor", param="fa")
    assert name == "sub-01_space-dwi_model-tensor_param-fa_dwimap.nii.gz"
    assert bids_derivative_name("sub-01", "mask", ".nii.gz", session="pre", desc="brain") == \
        "sub-01_ses-pre_desc-brain_mask.nii.gz"


def test_interface_copies_and_writes_sidecar(tmp_path):
    src = tmp_path / "fa.nii.gz"
    src.write_bytes(b"not really a nifti")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"EchoTime": 0.08, "Units": "overridden"}))
    iface = DerivativeName(in_file=str(src), subject="sub-01", suffix="dwimap",
                           entities=[("space", "dwi"), ("param", "fa")],
                           sidecar={"Units": "arbitrary"}, sidecar_file=str(meta), source_files=["raw.nii.gz"])
    (tmp_path / "node").mkdir()
    res = iface.run(cwd=str(tmp_path / "node"))
    out = res.outputs.out_file
    assert out.endswith("sub-01_space-dwi_param-fa_dwimap.nii.gz")
    side = json.loads(open(res.outputs.out_sidecar).read())
    assert side == {"EchoTime": 0.08, "Units": "arbitrary", "Sources": ["raw.nii.gz"]}
