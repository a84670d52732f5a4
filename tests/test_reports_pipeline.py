"""Reports of a real (small) batch: the subject job writes its report, the batch the cohort
report; a cohort cloned from that subject is then opened in headless Chromium.

Screenshots are kept in ``ci_artifacts/reports/`` (not in git) for people to look at.
"""

import base64
import csv
import io
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from matplotlib import image as mpimg

from csttool_nipype.batch.state import job_paths
from csttool_nipype.cli.main import main
from csttool_nipype.reports import build_cohort_reports
from csttool_nipype.reports.pdf import html_to_pdf
from csttool_nipype.sims.model import PhantomSpec
from csttool_nipype.sims.writer import write_bids_dataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "ci_artifacts" / "reports"
XSS = "<script>alert(1)</script>"
FAST = ["--denoise-method", "none", "--no-gibbs", "--no-motion-correction"]
SUBJECT_FIGURES = ["Preprocessing", "Brain mask and colour FA", "Registration to MNI", "Atlas ROIs in subject space",
                   "Left and right CST", "Tract profiles"]


def chromium(*args, timeout=180) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it "
                    "when it runs as root)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        done = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                               "--hide-scrollbars", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Dom(HTMLParser):
    """Tags, attributes and text of a page, enough to count rows, scripts and images."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _dom(html: str) -> _Dom:
    dom = _Dom()
    dom.feed(html)
    return dom


def _png(uri: str) -> np.ndarray:
    return mpimg.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")


def _assert_not_blank(pixels: np.ndarray, what: str) -> None:
    rgb = pixels[..., :3].astype(float)
    assert rgb.std() > 0.05, f"{what} is (nearly) uniform"
    assert (rgb.min(axis=-1) < 0.9).mean() > 0.02, f"{what} is (nearly) all white"


def _html_without_timestamp(path: Path) -> str:
    return re.sub(r'<span id="generated">[^<]*</span>', "", path.read_text())


@pytest.fixture(scope="module")
def batch_out(tmp_path_factory):
    """``csttool batch`` on one phantom subject (every stage, no preprocessing) and a corrupt
    copy of it stored under a folder path that spells ``<script>alert(1)</script>``."""
    root = tmp_path_factory.mktemp("reports_batch")
    raw = write_bids_dataset(root / "raw", 1, spec=PhantomSpec(voxel_size=3.0, n_directions=12, snr=30.0), seed=3)
    nifti = raw / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    evil = root / "<script>alert(1)<" / "script>"
    evil.mkdir(parents=True)
    (evil / "sub-98_dwi.nii.gz").write_bytes(nifti.read_bytes()[:20000])
    for ext in ("bval", "bvec", "json"):
        shutil.copy(nifti.with_name(f"sub-01_dwi.{ext}"), evil / f"sub-98_dwi.{ext}")
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"subjects": [{"id": "sub-01", "nifti": str(nifti)},
                                                 {"id": "sub-98", "nifti": str(evil / "sub-98_dwi.nii.gz")}]}))
    out = root / "OUT"
    assert main(["batch", "--manifest", str(manifest), "--out", str(out), "--nprocs", "2", *FAST]) == 1
    return out


def test_subject_job_writes_a_report_with_every_figure(batch_out):
    report = batch_out / "sub-01" / "sub-01_report.html"
    done = json.loads((batch_out / "sub-01" / "_done.json").read_text())
    assert "sub-01_report.html" in [o["path"] for o in done["outputs"]]   # written by the job, checksummed
    html = report.read_text()
    for title in SUBJECT_FIGURES:
        assert f"<h3>{title}</h3>" in html, f"figure {title!r} missing"
    assert "not drawn" not in html
    uris = re.findall(r'src="(data:image/png;base64,[^"]+)"', html)
    assert len(uris) == len(SUBJECT_FIGURES)
    for title, uri in zip(SUBJECT_FIGURES, uris):
        _assert_not_blank(_png(uri), f"figure {title!r}")
    assert '<table id="metrics">' in html and "voxel size (mm)" in html and "registration + ROIs" in html
    assert "denoise method" in html             # the options the job ran with
    assert done["result"]["config"]["denoise_method"] == "none"   # recorded for later rebuilds of the texts
    assert '<h2 id="methods">' in html and "No denoising was applied." in html   # the methods text of this run


def test_a_batch_subject_has_the_outputs_of_csttool_run(batch_out):
    """The batch job and ``csttool run`` are one run_subject: the subject's promoted files (listed in
    _done.json; on disk, the engine's own files aside) are the golden list of a run's."""
    golden = Path(__file__).parent / "data" / "golden_outputs_phantom.txt"
    expected = sorted(line.removeprefix("sub-01/") for line in golden.read_text().splitlines()
                      if line.startswith("sub-01/"))
    done = json.loads((batch_out / "sub-01" / "_done.json").read_text())
    assert sorted(o["path"] for o in done["outputs"]) == expected
    engine = job_paths(batch_out, "sub-01")
    on_disk = sorted(p.relative_to(engine.root).as_posix() for p in engine.root.rglob("*")
                     if p.is_file() and p not in (engine.done, engine.lock) and engine.logs not in p.parents)
    assert on_disk == expected


def test_batch_writes_cohort_outputs_and_report_rebuilds_the_same_csv(batch_out):
    csv_path, report = batch_out / "batch_metrics.csv", batch_out / "batch_report.html"
    first_csv, first_html = csv_path.read_bytes(), _html_without_timestamp(report)
    profiles = (batch_out / "batch_profiles.tsv").read_text().splitlines()
    subject_tsv = next((batch_out / "sub-01" / "dwi").glob("*_tractprofile.tsv")).read_text().splitlines()
    assert profiles == subject_tsv              # one successful subject: its profiles, nothing else
    methods_md = (batch_out / "methods.md").read_text()
    assert "Subjects (1): sub-01" in methods_md and "No denoising was applied." in methods_md
    assert main(["report", str(batch_out)]) == 0
    assert csv_path.read_bytes() == first_csv
    assert _html_without_timestamp(report) == first_html


def test_error_text_with_a_script_is_escaped_in_the_browser(batch_out):
    html = (batch_out / "batch_report.html").read_text()
    with open(batch_out / "batch_metrics.csv", newline="") as fh:
        reason = {r["subject"]: r["error_reason"] for r in csv.DictReader(fh)}["sub-98"]
    assert XSS in reason                        # the payload really reached the report's input
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    dom = _dom(chromium("--dump-dom", (batch_out / "batch_report.html").as_uri()))
    assert sum(tag == "script" for tag, _ in dom.tags) == 1      # only the report's own script
    assert any(XSS in text for text in dom.text)                 # shown as text


@pytest.fixture(scope="module")
def cohort_out(batch_out, tmp_path_factory):
    """The real subject cloned into seven, with FA/MD scaled per clone (sub-06: left CST FA -25 %)."""
    out = tmp_path_factory.mktemp("reports_cohort") / "OUT"
    shutil.copytree(batch_out, out, ignore=shutil.ignore_patterns(".lock"))
    n = 6
    spread = [NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)]
    status = json.loads((out / "batch_status.json").read_text())
    for i, z in enumerate(spread, start=2):
        sub = f"sub-{i:02d}"
        fa_left = (1 + 0.02 * z) * (0.75 if sub == "sub-06" else 1.0)
        _clone(out / "sub-01", out / sub, {"fa": (fa_left, 1 + 0.02 * spread[-i + 1]), "md": (1 - 0.015 * z, 1)})
        status["order"].insert(i - 1, sub)
        status["outcomes"][sub] = dict(status["outcomes"]["sub-01"])
    (out / "batch_status.json").write_text(json.dumps(status))
    build_cohort_reports(out, subject_reports="none", strict=True)
    return out


def _clone(source: Path, target: Path, scale: dict) -> None:
    """Copy a subject folder under a new id, FA/MD summary and profiles scaled per side."""
    old, new = source.name, target.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(f"{old}_report.html"))
    for path in sorted(target.rglob(f"*{old}*"), key=lambda p: -len(p.parts)):
        path.rename(path.with_name(path.name.replace(old, new)))
    summary = next(target.glob("dwi/*_desc-summary_metrics.tsv"))
    with open(summary, newline="") as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    row["subject"] = new
    for metric, (left, right) in scale.items():
        a, b = float(row[f"{metric}_mean_left"]) * left, float(row[f"{metric}_mean_right"]) * right
        row.update({f"{metric}_mean_left": a, f"{metric}_mean_right": b, f"{metric}_mean_li": (a - b) / (a + b)})
    _write_tsv(summary, [row])
    profile = next(target.glob("dwi/*_tractprofile.tsv"))
    with open(profile, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    for r in rows:
        r["subject"] = new
        if r["metric"] in scale:
            r["value"] = f"{float(r['value']) * scale[r['metric']][0 if r['side'] == 'left' else 1]:.6g}"
    _write_tsv(profile, rows)
    done = json.loads((target / "_done.json").read_text())
    (target / "_done.json").write_text(json.dumps({**done, "key": new}))


def _write_tsv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def test_cohort_report_in_headless_chromium(cohort_out):
    with open(cohort_out / "batch_metrics.csv", newline="") as fh:
        subjects = [r["subject"] for r in csv.DictReader(fh)]
    assert subjects == ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05", "sub-06", "sub-07", "sub-98"]
    url = (cohort_out / "batch_report.html").as_uri()
    dom = _dom(chromium("--dump-dom", url))
    tables = [a for tag, a in dom.tags if tag == "table" and a.get("id") == "subjects"]
    assert tables and tables[0].get("data-ready") == "1"         # the sorting/filtering script ran
    rows = [a for tag, a in dom.tags if tag == "tr" and "data-status" in a]
    assert len(rows) == len(subjects)
    assert [a.get("class") for a in rows].count("outlier") >= 1
    images = [a["src"] for tag, a in dom.tags if tag == "img"]
    assert len(images) == 3                                       # FA/MD, profiles, laterality
    for uri in images:
        _assert_not_blank(_png(uri), "cohort plot")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "batch_report.png"
    shot.unlink(missing_ok=True)
    chromium(f"--screenshot={shot}", "--window-size=1400,3400", url)
    _assert_not_blank(mpimg.imread(shot), "the screenshot")
    html = (cohort_out / "batch_report.html").read_text()
    outliers = html[html.index('<table id="outliers">'):]
    assert re.search(r"<td>sub-06</td><td><ul><li>FA left [\d.]+ \(robust z = -\d", outliers)


def test_subject_report_screenshot_and_pdf(batch_out):
    report = batch_out / "sub-01" / "sub-01_report.html"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "sub-01_report.png"
    shot.unlink(missing_ok=True)
    chromium(f"--screenshot={shot}", "--window-size=1400,4400", report.as_uri())
    _assert_not_blank(mpimg.imread(shot), "the subject report screenshot")
    pdf = html_to_pdf(report, ARTIFACTS / "sub-01_report.pdf")
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 100_000   # the figures are in it
