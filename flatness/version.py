"""Single source of the package version (read by pyproject.toml and written into every output file)."""

__version__ = "0.2.0"
