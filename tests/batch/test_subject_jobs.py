"""Subjects become engine jobs: options merge per subject, and hashes change only where options do."""

import pytest

from csttool_nipype.execution import busy_time
from csttool_nipype.subject_job import make_jobs
from csttool_nipype.subjects import SubjectSpec


def _specs(**per_subject):
    return [SubjectSpec(f"sub-0{i}", inputs={"nifti": f"/raw/sub-0{i}.nii.gz"}, options=per_subject.get(f"s{i}", {}))
            for i in (1, 2, 3)]


def test_changing_one_subjects_option_changes_only_its_hash():
    before = {j.key: j.config_hash for j in make_jobs(_specs(), {"denoise_method": "mppca"})}
    after = {j.key: j.config_hash for j in make_jobs(_specs(s2={"gibbs": False}), {"denoise_method": "mppca"})}
    assert [k for k in before if before[k] != after[k]] == ["sub-02"]


def test_global_option_change_touches_everyone_and_bad_options_are_invalid_jobs():
    a = make_jobs(_specs(), {})
    b = make_jobs(_specs(), {"fa_threshold": 0.25})
    assert all(x.config_hash != y.config_hash for x, y in zip(a, b))
    jobs = make_jobs(_specs(s3={"denoise_method": "bm4d"}), {})
    assert jobs[2].invalid and "denoise_method" in jobs[2].invalid and not jobs[0].invalid
    assert jobs[0].payload["options"]["stages"][-1] == "metrics"


@pytest.mark.parametrize("intervals, busy", [
    ([], 0.0),
    ([(0.0, 2.0), (5.0, 6.0)], 3.0),              # a gap between nodes is not busy
    ([(0.0, 4.0), (1.0, 2.0), (3.0, 7.0)], 7.0),  # overlapping nodes count once
    ([(3.0, 7.0), (0.0, 4.0)], 7.0),              # any order
])
def test_busy_time_is_the_length_of_the_union(intervals, busy):
    assert busy_time(intervals) == pytest.approx(busy)
