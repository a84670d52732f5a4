"""Cohort tables and reports from a batch output folder (fast: the files the aggregator reads
are generated here, with random metrics and one planted outlier; nothing is processed)."""

import csv
import json
import re
from statistics import NormalDist

import numpy as np
import pytest

from csttool_nipype.cli.main import main
from csttool_nipype.reports import build_cohort_reports
from csttool_nipype.reports.cohort_report import MIN_SUBJECTS_FOR_Z, robust_z

XSS = "<script>alert(1)</script>"
SIDES = ("left", "right")


def _tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _spread(rng, n, mean, sd):
    """``n`` values spread like a normal sample (evenly spaced quantiles, shuffled)."""
    quantiles = np.array([NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)])
    return mean + sd * quantiles[rng.permutation(n)]


def _cohort_metrics(rng, n):
    """Per subject and side: count, volume, FA and MD like a healthy cohort's."""
    columns = {"streamline_count": (400, 40), "volume_mm3": (25000, 1500), "fa_mean": (0.55, 0.01),
               "md_mean": (0.84e-3, 0.01e-3)}
    values = {(side, key): _spread(rng, n, *ms) for side in SIDES for key, ms in columns.items()}
    return [{side: {key: float(values[side, key][i]) for key in columns} for side in SIDES} for i in range(n)]


def _subject(out, sub, rng, metrics, fa_scale_left=1.0, flags=""):
    """A finished subject: ``_done.json``, a log, a summary row and profiles."""
    folder = out / sub
    metrics["left"]["fa_mean"] *= fa_scale_left
    row = {"subject": sub, "session": ""}
    for key in metrics["left"]:
        left, right = metrics["left"][key], metrics["right"][key]
        row.update({f"{key}_left": left, f"{key}_right": right, f"{key}_li": (left - right) / (left + right)})
    row.update(flags=flags.split(":")[0], flag_reasons=flags, n_flags=int(bool(flags)))
    _tsv(folder / "dwi" / f"{sub}_desc-summary_metrics.tsv", [row])
    nodes = np.arange(100)
    profile = []
    for side in SIDES:
        for metric, base in (("fa", 0.6), ("md", 0.82e-3)):
            values = base * (1 + 0.05 * np.sin(nodes / 9.0)) + rng.normal(0, base * 0.01, nodes.size)
            if metric == "fa" and side == "left":
                values = values * fa_scale_left
            profile += [{"subject": sub, "session": "", "side": side, "node": n, "metric": metric, "value": f"{v:.6g}"}
                        for n, v in zip(nodes, values)]
    _tsv(folder / "dwi" / f"{sub}_space-dwi_bundle-CST_tractprofile.tsv", profile)
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / f"{sub}.log").write_text("2026-01-01 00:00:00,000 INFO csttool: done\n")
    (folder / "_done.json").write_text(json.dumps({
        "status": "SUCCESS", "key": sub, "version": "0.1.0", "config_hash": "0123456789abcdef",
        "duration_s": float(rng.uniform(200, 400)), "result": {"node_durations_s": {
            "wf.dwi_import": 3.0, "wf.tensor_wf.fit_tensor": 7.5, "wf.registration_wf.register_mni": 36.0}}}))


def _failed(out, sub, status, category, reason):
    (out / sub / "logs").mkdir(parents=True)
    (out / sub / "logs" / f"{sub}.log").write_text(f"2026-01-01 00:00:00,000 ERROR csttool: {reason}\n")
    (out / sub / "logs" / "last_attempt.json").write_text(json.dumps(
        {"status": status, "category": category, "reason": reason, "duration_s": 3.0, "version": "0.1.0"}))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """8 successful subjects (sub-06: left FA 25 % low; sub-03: a QC flag), one failed, one timed out."""
    out = tmp_path_factory.mktemp("reports") / "OUT"
    rng = np.random.default_rng(7)
    for i, metrics in enumerate(_cohort_metrics(rng, 8), start=1):
        sub = f"sub-{i:02d}"
        _subject(out, sub, rng, metrics, fa_scale_left=0.75 if sub == "sub-06" else 1.0,
                 flags="too_few_streamlines_left: 4 left CST streamlines (< 10)" if sub == "sub-03" else "")
    _failed(out, "sub-09", "FAILED", "invalid input", f"/data/{XSS}/sub-09_dwi.nii.gz: file truncated")
    _failed(out, "sub-10", "TIMEOUT", "timeout", "exceeded 120m limit")
    keys = [f"sub-{i:02d}" for i in range(1, 11)]
    status = {k: {"status": "SUCCESS", "category": "", "reason": "", "duration_s": 300.0} for k in keys[:8]}
    status["sub-09"] = {"status": "FAILED", "category": "invalid input", "reason": XSS, "duration_s": 3.0}
    status["sub-10"] = {"status": "TIMEOUT", "category": "timeout", "reason": "exceeded", "duration_s": 7200.0}
    (out / "batch_status.json").write_text(json.dumps({
        "version": "0.1.0", "config_hash": "0123456789abcdef", "started": "2026-01-01T00:00:00",
        "duration_s": 9000.0, "order": keys, "outcomes": status}))
    return out


@pytest.fixture(scope="module")
def built(out):
    return build_cohort_reports(out, strict=True)


def _html_without_timestamp(path):
    return re.sub(r'<span id="generated">[^<]*</span>', "", path.read_text())


def test_tables_and_reports_are_written(out, built):
    paths = built
    assert paths["metrics"] == out / "batch_metrics.csv" and paths["report"] == out / "batch_report.html"
    assert sorted(p.name for p in paths["subject_reports"]) == [f"sub-{i:02d}_report.html" for i in range(1, 9)]
    with open(paths["metrics"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["subject"] for r in rows] == [f"sub-{i:02d}" for i in range(1, 11)]
    assert [r["status"] for r in rows[-2:]] == ["FAILED", "TIMEOUT"]


def test_batch_profiles_are_the_subject_profiles_in_long_format(out, built):
    path = built["profiles"]
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert list(rows[0]) == ["subject", "session", "side", "node", "metric", "value"]
    expected = []
    for i in range(1, 9):
        tsv = out / f"sub-{i:02d}" / "dwi" / f"sub-{i:02d}_space-dwi_bundle-CST_tractprofile.tsv"
        with open(tsv, newline="") as fh:
            expected += list(csv.DictReader(fh, delimiter="\t"))
    assert rows == expected                     # failed subjects contribute nothing


def test_rerun_gives_the_same_csv_and_an_equivalent_report(out, built):
    first = built
    csv1, tsv1 = first["metrics"].read_bytes(), first["profiles"].read_bytes()
    html1 = _html_without_timestamp(first["report"])
    written = {p: p.stat().st_mtime_ns for p in first["subject_reports"]}
    assert main(["report", str(out)]) == 0
    assert first["metrics"].read_bytes() == csv1 and first["profiles"].read_bytes() == tsv1
    assert _html_without_timestamp(first["report"]) == html1
    assert {p: p.stat().st_mtime_ns for p in written} == written   # subject reports: only missing ones are written


def test_outlier_and_flagged_subjects_are_listed_with_the_reason(built):
    html = built["report"].read_text()
    table = html[html.index('<table id="outliers">'):]
    table = table[: table.index("</table>")]
    listed = re.findall(r"<tr><td>(sub-\d+)</td>", table)
    assert "sub-06" in listed and "sub-03" in listed
    assert re.search(r"sub-06</td><td><ul><li>FA left [\d.]+ \(robust z = -\d+\.\d\)", table)
    assert "QC flag: too_few_streamlines_left: 4 left CST streamlines (&lt; 10)" in table
    assert sorted(listed) == ["sub-03", "sub-06"]   # the others come from one distribution


def test_user_text_is_escaped(built):
    html = built["report"].read_text()
    assert XSS not in html
    assert "/data/&lt;script&gt;alert(1)&lt;/script&gt;/sub-09_dwi.nii.gz" in html
    assert html.count("<script") == 1           # the report's own sorting/filtering script


def test_failures_section_names_category_reason_and_log(built):
    html = built["report"].read_text()
    section = html[html.index('<table id="failures">'):]
    assert 'href="sub-10/logs/sub-10.log"' in section and "exceeded 120m limit" in section
    assert "invalid input" in section and "sub-09/logs/sub-09.log" in section


def test_robust_z_needs_enough_subjects():
    assert all(np.isnan(robust_z([0.5, 0.51, 0.49, 0.2][: MIN_SUBJECTS_FOR_Z - 1])))
    z = robust_z([0.50, 0.51, 0.49, 0.50, 0.52, 0.30])
    assert abs(z[-1]) > 3.5 and max(abs(v) for v in z[:-1]) < 3.5
    assert all(np.isnan(robust_z([0.5] * 6)))   # no spread at all: no z-score


def test_subject_report_without_images_says_what_is_missing(built):
    path = built["subject_reports"][0]
    html = path.read_text()
    assert '<table id="metrics">' in html and "<h3>Tract profiles</h3>" in html
    assert "Left and right CST" not in html     # no streamlines on disk: no such figure
    assert "registration + ROIs" in html        # stage durations from _done.json


def test_slice_titles_give_the_world_coordinate_of_the_slice_centre_on_oblique_grids():
    """A sagittal grid tilted 20 degrees about A-P (as the Canon sagittal scan): the slice
    through the volume's centre voxel is at the world x of that voxel, which the old
    corner-based label put tens of mm off."""
    from csttool_nipype.reports.figures import world_mm

    t = np.deg2rad(20.0)
    rot = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    affine = np.eye(4)
    affine[:3, :3] = 3.0 * rot
    shape = (40, 80, 80)
    centre = (np.array(shape) - 1) / 2.0
    # put the volume's centre at world (10, -20, 30)
    affine[:3, 3] = np.array([10.0, -20.0, 30.0]) - affine[:3, :3] @ centre
    assert world_mm(affine, "sagittal", centre[0], shape) == pytest.approx(10.0)
    assert world_mm(affine, "coronal", centre[1], shape) == pytest.approx(-20.0)
    # one voxel step along the sagittal axis moves the centre by 3 cos(20°) mm in x
    assert world_mm(affine, "sagittal", centre[0] + 1, shape) == pytest.approx(10.0 + 3.0 * np.cos(t))
