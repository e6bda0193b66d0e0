"""setup.py installs every console script's man page, the config pages and the data files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
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


def _contrib_files() -> list[str]:
    root = procs.ROOT
    return sorted(str(p.relative_to(root)) for p in (root / "contrib").rglob("*") if p.is_file())


def test_wheel_installs_contrib_as_documentation(tmp_path, no_build_litter):
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(procs.ROOT)],
        capture_output=True, text=True, timeout=170, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (wheel,) = tmp_path.glob("beamline_servers-*.whl")
    zf = zipfile.ZipFile(wheel)
    names = set(zf.namelist())
    doc = "beamline_servers-0.1.0.data/data/share/doc/beamline-servers"
    assert f"{doc}/README.md" in names
    for rel in _contrib_files():
        assert f"{doc}/{rel}" in names, f"{rel} is not installed as documentation"
    unit = zf.read(f"{doc}/contrib/systemd/mca_server.service").decode()
    assert unit == (procs.ROOT / "contrib/systemd/mca_server.service").read_text()
    # init scripts keep their execute bit
    info = zf.getinfo(f"{doc}/contrib/init.d/mca_server")
    assert (info.external_attr >> 16) & 0o111


def test_sdist_carries_contrib_and_man(tmp_path, no_build_litter):
    res = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--formats=gztar", "-d", str(tmp_path)],
        capture_output=True, text=True, timeout=170, cwd=procs.ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (sdist,) = tmp_path.glob("beamline_servers-*.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for rel in _contrib_files():
        assert rel in names, f"{rel} is missing from the sdist"
    for page in (procs.ROOT / "man").glob("*.[1-9]"):
        assert f"man/{page.name}" in names
    assert "MANIFEST.in" in names and "README.md" in names
