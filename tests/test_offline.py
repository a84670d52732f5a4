"""``csttool run`` needs no network: every template and atlas comes from installed packages.

The whole pipeline runs on a small phantom with every socket connection refused (Python's
``socket.socket.connect``/``connect_ex`` and ``socket.create_connection`` raise), so a fetch
anywhere (nilearn or dipy data fetchers, a version check, an atlas download) fails the run.
"""

from __future__ import annotations

import socket

import pandas as pd
import pytest

from csttool_nipype.cli.main import main
from csttool_nipype.sims.model import PhantomSpec
from csttool_nipype.sims.phantom import make_phantom
from csttool_nipype.sims.writer import write_phantom

pytestmark = pytest.mark.slow


class NetworkBlocked(OSError):
    """Raised instead of opening a connection."""


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args else kwargs)
        raise NetworkBlocked(f"network access attempted during an offline test: {args[1:]!r}")

    def refuse_create(address, *args, **kwargs):
        attempts.append(address)
        raise NetworkBlocked(f"network access attempted during an offline test: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse_create)
    return attempts


def test_the_guard_blocks_connections(no_network):
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 9), timeout=0.1)
    with socket.socket() as s, pytest.raises(OSError):
        s.connect(("127.0.0.1", 9))
    assert len(no_network) == 2


def test_full_run_works_without_network(no_network, tmp_path):
    ph = make_phantom(PhantomSpec(voxel_size=3.0, n_directions=20, rotation_deg=5.0, translation_mm=5.0,
                                  orientation="LAS", seed=21))
    paths = write_phantom(ph, tmp_path / "raw", subject="sub-01")
    code = main(["run", "--dwi", str(paths["dwi"]), "--out", str(tmp_path / "out"), "--subject-id", "sub-01",
                 "--no-gibbs", "--no-motion-correction"])
    assert code == 0
    assert no_network == [], f"connections attempted: {no_network}"
    dwi = tmp_path / "out" / "sub-01" / "dwi"
    row = pd.read_csv(dwi / "sub-01_desc-summary_metrics.tsv", sep="\t").iloc[0]
    assert row["streamline_count_left"] > 0 and row["streamline_count_right"] > 0
    assert (dwi / "sub-01_space-dwi_desc-cstrois_dseg.nii.gz").exists()
