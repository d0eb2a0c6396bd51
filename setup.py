"""Package layout only: the metadata, dependencies and extras are in pyproject.toml ([project]).

The CLI lives in cli/ at the top level but installs as flatness.cli; pyproject's [tool.setuptools] can map
a folder (package-dir) but not combine a discovered package list with one extra mapped package, so the
list is built here.
"""

from setuptools import find_packages, setup

setup(
    package_dir={"flatness": "flatness", "flatness.cli": "cli"},
    packages=find_packages(include=["flatness", "flatness.*"]) + ["flatness.cli"],
)
