"""Single source of the package version (read by setup.py and written into every output file)."""

__version__ = "0.1.0"
