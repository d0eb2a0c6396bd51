"""Build entry of flatness: metadata, dependencies and the ``flatness`` console script (see pyproject.toml)."""

import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, "flatness", "version.py")) as handle:
    exec(handle.read(), version)

with open(os.path.join(here, "README.md"), encoding="utf-8") as handle:
    long_description = handle.read()

setup(
    name="flatness",
    version=version["__version__"],
    description="Loss-landscape analysis of neural networks: ERM vs AMP/SAM, Hessian spectra, sharpness, surfaces",
    long_description=long_description,
    long_description_content_type="text/markdown",
    # Tested on 3.10 (the oldest with a current torch in the index; 3.9 stops at torch 2.8) and 3.13.
    python_requires=">=3.10",
    # The CLI lives in cli/ at the top level but installs as flatness.cli.
    package_dir={"flatness": "flatness", "flatness.cli": "cli"},
    packages=find_packages(include=["flatness", "flatness.*"]) + ["flatness.cli"],
    install_requires=[
        "torch>=2.2",
        "torchvision>=0.17",
        "numpy",
        "scipy",
        "matplotlib",
        "h5py",
        "click>=8",
        "scikit-learn",
        "tqdm",
        "markdown-it-py>=3",
        "mnist1d",  # MNIST-1D's own generator (the dataset is generated offline, never downloaded)
    ],
    # ruff: the lint/format gate scripts/test.sh runs (pinned: its rules and format move between releases;
    # keep .pre-commit-config.yaml's rev equal); selenium drives headless chromium in the report test; ray and
    # safetensors so that CI tests the optional Ray engine and .safetensors weights instead of skipping them.
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "hypothesis", "ruff==0.17.6", "selenium>=4.11", "ray", "safetensors"],
        "safetensors": ["safetensors"],  # loading .safetensors weights
        "ray": ["ray"],  # flatness sweep/experiment --engine ray
    },
    entry_points={"console_scripts": ["flatness=flatness.cli.main:main"]},
)
