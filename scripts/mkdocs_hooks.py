"""MkDocs hooks of the documentation site (mkdocs.yml ``hooks:``): checks a plain mkdocs build cannot make.

* Every public name of ``flatness.__all__`` has a docstring and appears on the API page
  (docs/reference/api.md as ``::: flatness.NAME``); a name without either is a warning, which
  ``mkdocs build --strict`` turns into a failed build.
* The notebooks' HTML templates are found where nbconvert itself is installed, also when this venv
  reaches its packages through another one's site-packages (Jupyter looks only under sys.prefix).
"""

from __future__ import annotations

import inspect
import logging
import os
import re

log = logging.getLogger("mkdocs.plugins.flatness")
API_PAGE = os.path.join("reference", "api.md")
NOT_DOCUMENTED = {"__version__"}  # a string: the API page names it in prose


def on_config(config, **kwargs):
    """Add nbconvert's own ``share/jupyter`` to JUPYTER_PATH (its templates render the notebooks)."""
    import nbconvert

    prefix = os.path.dirname(nbconvert.__file__)
    for _ in range(4):  # PREFIX/lib/pythonX.Y/site-packages/nbconvert -> PREFIX
        prefix = os.path.dirname(prefix)
    share = os.path.join(prefix, "share", "jupyter")
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if os.path.isdir(share) and share not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([*paths, share])
    return config


def on_pre_build(config, **kwargs) -> None:
    """Warn about every public name that has no docstring or no entry on the API page."""
    import flatness

    with open(os.path.join(config["docs_dir"], API_PAGE), encoding="utf-8") as handle:
        listed = set(re.findall(r"^::: flatness\.(\w+)\s*$", handle.read(), flags=re.MULTILINE))
    for name in sorted(set(flatness.__all__) - NOT_DOCUMENTED):
        if not (inspect.getdoc(getattr(flatness, name)) or "").strip():
            log.warning(f"flatness.{name} is public (flatness.__all__) but has no docstring")
        if name not in listed:
            log.warning(f"flatness.{name} is public (flatness.__all__) but not on {API_PAGE}")
    for name in sorted(listed - set(flatness.__all__)):
        log.warning(f"{API_PAGE} documents flatness.{name}, which is not in flatness.__all__")
