"""setup.py installs every console script's man page, the config pages and the data files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.support import procs

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def no_build_litter():
    """setuptools builds in the source tree; remove what this test made there."""
    made = [procs.ROOT / "build"]
    before = {p for p in made if p.exists()}
    yield
    for p in made:
        if p not in before:
            shutil.rmtree(p, ignore_errors=True)


def test_wheel_carries_man_pages_and_data(tmp_path, no_build_litter):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(procs.ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = tmp_path.glob("beamline_servers-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for page in sorted((procs.ROOT / "man").glob("*.[1-9]")):
        section = page.suffix[1:]
        want = f"beamline_servers-0.1.0.data/data/share/man/man{section}/{page.name}"
        assert want in names, f"{page.name} is not installed to share/man/man{section}"
    for pkg in ("archonsrv", "specsrv"):
        for f in (procs.ROOT / pkg / "data").iterdir():
            assert f"{pkg}/data/{f.name}" in names
    assert "common/runtime.py" in names and "mrt/protocol.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for cmd in ("sendsockcmd", "marserver", "camerad", "specsrv", "mr_t", "mca_server"):
        assert f"{cmd} = " in text
