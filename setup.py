"""beamline-servers: drop-in replacements for five small beamline network daemons."""

import os
from glob import glob

from setuptools import find_packages, setup

# Console scripts, one list per package (command name, then module:function).
COMMON = ["sendsockcmd = common.sendsockcmd:main"]

# marserver
MARSERVER = ["marserver = marserver.cli:main", "marsim = marserver.sim:main"]

# specsrv, server-hardware (specsrv/hdw)
SPECSRV_HDW = [
    "mca_server = specsrv.hdw.mca:main",
    "img_server = specsrv.hdw.img:main",
    "hdw-client = specsrv.hdw.client_cli:main",
]

# specsrv, server mode
SPECSRV = ["specsrv = specsrv.cli:main", "spec-remote = specsrv.client:main"]

# archonsrv
ARCHONSRV = [
    "camerad = archonsrv.cli:main",
    "archonsim = archonsrv.sim:main",
    "camerad-listener = archonsrv.listener:main",
]

# mrt
MRT = [
    "mr_t = mrt.cli:main",
    "mr_t_client = mrt.client:main",
    "eiger-zmq-sim = mrt.sim:main",
]

# installed documentation: share/doc/beamline-servers/{README.md,contrib/...}
DOC = "share/doc/beamline-servers"
CONTRIB_DIRS = ["systemd", "init.d", "config"]


def files(pattern: str) -> list[str]:
    return sorted(p for p in glob(pattern) if os.path.isfile(p))


CONSOLE_SCRIPTS = COMMON + MARSERVER + SPECSRV_HDW + SPECSRV + ARCHONSRV + MRT

setup(
    name="beamline-servers",
    version="0.1.0",
    description="Drop-in Python replacements for marserver, spec server_hdw and server mode, "
    "the Archon camerad and Mr. T, each with a hardware simulator",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["common", "marserver*", "specsrv*", "archonsrv*", "mrt*"]),
    package_data={"": ["data/*"]},
    install_requires=[
        "numpy",
        "pyzmq",
        "h5py",
        "configargparse",
        # detaching (double fork, setsid, closing descriptors); pulls in lockfile, which
        # common.lock no longer uses: it needs a kernel lock, PIDLockFile only O_EXCL
        "python-daemon",
        "setproctitle",
        # FITS files for camerad: header cards, BZERO/BSCALE, extensions done right
        "astropy",
        # HDF5 filter 32008 (bitshuffle/LZ4) so h5py and users can read mr_t's files
        "hdf5plugin",
        # LZ4 block codec for the EIGER stream encodings (lz4<, bs*-lz4<)
        "lz4",
        # mr_t: the maintained C bitshuffle/LZ4 codec (the HDF5 filter's own code),
        # 50-100x faster than a numpy bit transpose for EIGER frames
        "bitshuffle",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-timeout",
            "hypothesis",
            "ruff",
            # CSS's own spec client, to test specsrv with (it needs asyncore)
            "certif-pyspec; python_version < '3.12'",
            # the field's reader of spec data files, to open specsrv's scans with
            "silx",
            # fabio: a real reader of EIGER/NXmx masters, for mr_t's HDF5 output tests
            "fabio",
        ],
    },
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    data_files=[
        ("share/man/man1", sorted(glob("man/*.1"))),
        ("share/man/man5", sorted(glob("man/*.5"))),
        ("share/man/man7", sorted(glob("man/*.7"))),
        # contrib/ (and README.md) as documentation; MANIFEST.in puts them in the sdist
        (DOC, ["README.md"]),
        (f"{DOC}/contrib", ["contrib/README.md"]),
        *[(f"{DOC}/contrib/{d}", files(f"contrib/{d}/*")) for d in CONTRIB_DIRS],
    ],
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Physics",
    ],
)
