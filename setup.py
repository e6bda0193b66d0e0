"""beamline-servers: drop-in replacements for five small beamline network daemons."""

from glob import glob

from setuptools import setup

CONSOLE_SCRIPTS = [
    # common
    "sendsockcmd = common.sendsockcmd:main",
]

setup(
    name="beamline-servers",
    version="0.1.0",
    description="Drop-in Python replacements for marserver, spec server_hdw and server mode, "
    "the Archon camerad and Mr. T, each with a hardware simulator",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=["common", "marserver", "specsrv", "archonsrv", "mrt"],
    package_data={"archonsrv": ["data/*"], "specsrv": ["data/*"], "mrt": ["data/*"]},
    install_requires=[
        "numpy",
        "pyzmq",
        "h5py",
        "configargparse",
        "python-daemon",
        "lockfile",
        "setproctitle",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "hypothesis", "ruff"],
    },
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    data_files=[
        ("share/man/man1", sorted(glob("man/*.1"))),
        ("share/man/man5", sorted(glob("man/*.5"))),
    ],
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Physics",
    ],
)
