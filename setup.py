"""beamline-servers: drop-in replacements for five small beamline network daemons."""

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
        "python-daemon",
        "lockfile",
        "setproctitle",
        # FITS files for camerad: header cards, BZERO/BSCALE, extensions done right
        "astropy",
        # HDF5 filter 32008 (bitshuffle/LZ4) so h5py and users can read mr_t's files
        "hdf5plugin",
        # LZ4 block codec for the EIGER stream encodings (lz4<, bs*-lz4<)
        "lz4",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "hypothesis", "ruff"],
    },
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    data_files=[
        ("share/man/man1", sorted(glob("man/*.1"))),
        ("share/man/man5", sorted(glob("man/*.5"))),
        ("share/man/man7", sorted(glob("man/*.7"))),
    ],
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Physics",
    ],
)
