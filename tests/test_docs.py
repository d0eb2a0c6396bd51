"""The documentation site builds with warnings as errors, with the three notebooks executed and their outputs
in the pages, the API page covering every public name, and the CLI page every command; a broken
cross-reference, a dead link or a public name missing from the API page fails the build.

One strict build (``mkdocs build --strict``, as ``scripts/docs.sh`` runs it) executes the notebooks
(mkdocs-jupyter), so the notebooks are run in CI by this file; a second build, without executing them,
shows three deliberate breaks failing it."""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

import flatness

pytest.importorskip("mkdocs")  # the docs tools are in the test extra, so CI runs this file
pytest.importorskip("mkdocs_jupyter")

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = {  # page -> what its executed outputs print (the source alone does not match)
    "measure_your_model": r"top eigenvalues: \[\d",
    "erm_amp_sam": r"train sam s0 +\d+\.\d s",
    "flatness_vs_generalisation": r"4 cells done, 0 failed",
}


def mkdocs_build(config, site, execute, cwd=REPO, timeout=420):
    env = dict(os.environ, FLATNESS_DOCS_EXECUTE="true" if execute else "false", NO_MKDOCS_2_WARNING="1")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("MPLBACKEND", None)  # the notebook kernel draws inline
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)]
    began = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"mkdocs build (execute={execute}): {time.perf_counter() - began:.1f} s")
    return done


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    done = mkdocs_build(REPO / "mkdocs.yml", out, execute=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    # mkdocs's own warnings (strict would have failed on them; the notebook kernel's "[IPKernelApp] WARNING"
    # about its local TCP transport is not one)
    assert not re.search(r"^WARNING\b", done.stderr, flags=re.MULTILINE), done.stderr[-6000:]
    return out


def test_notebooks_run_and_the_site_shows_their_outputs(site):
    for name, pattern in NOTEBOOKS.items():
        page = (site / "notebooks" / name / "index.html").read_text(encoding="utf-8")
        assert re.search(pattern, page), f"{name}: no executed output"
        assert page.count("data:image/png;base64,") >= 1, f"{name}: no figure in the page"
        assert "Traceback" not in page, f"{name}: a cell failed"
        stderr = r'<div class="jp-RenderedText[^"]*"[^>]*data-mime-type="application/vnd.jupyter.stderr"'
        assert not re.search(stderr, page), f"{name}: a cell wrote to stderr"  # (the page's CSS names it too)


def test_api_page_documents_every_public_name_and_cli_page_every_command(site):
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    missing = [n for n in flatness.__all__ if n != "__version__" and f'id="flatness.{n}"' not in api]
    assert not missing, missing
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    from flatness.cli.main import COMMANDS

    assert [c for c in COMMANDS if f'id="flatness-{c}"' not in cli] == []
    for page in ("metrics", "ARCHITECTURE", "reliability", "benchmarks", "changelog", "getting-started"):
        assert (site / page / "index.html").is_file(), page


def test_getting_started_shows_the_readme_example_that_test_readme_runs():
    from test_readme import section_code

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    page = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")
    assert section_code(page, "## Your own model") == section_code(readme, "## Your own model")


def test_broken_reference_dead_link_and_undocumented_name_fail_the_build(tmp_path):
    for name in ("mkdocs.yml", "README.md", "CHANGELOG.md"):
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copytree(REPO / "benchmarks", tmp_path / "benchmarks", ignore=shutil.ignore_patterns("*.py"))
    (tmp_path / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "mkdocs_hooks.py", tmp_path / "scripts")
    index = tmp_path / "docs" / "index.md"
    index.write_text(
        index.read_text(encoding="utf-8") + "\nSee [lanczos][flatness.no_such_function] and [gone](no-such-page.md).\n",
        encoding="utf-8",
    )
    api = tmp_path / "docs" / "reference" / "api.md"
    api.write_text(api.read_text(encoding="utf-8").replace("::: flatness.slq\n", ""), encoding="utf-8")
    broken = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site2", execute=False, cwd=tmp_path)
    assert broken.returncode != 0
    output = broken.stdout + broken.stderr
    # exactly the three breaks below fail it (the repository's own pages build clean: the ``site`` fixture)
    assert "Aborted with 3 warnings in strict mode" in output, output[-4000:]
    assert "Could not find cross-reference target 'flatness.no_such_function'" in output
    assert "contains a link 'no-such-page.md', but the target is not found" in output
    assert "flatness.slq is public (flatness.__all__) but not on reference/api.md" in output


def test_hook_warns_about_a_public_name_without_docstring(monkeypatch, caplog):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import mkdocs_hooks
    finally:
        sys.path.remove(str(REPO / "scripts"))
    config = {"docs_dir": str(REPO / "docs")}
    with caplog.at_level("WARNING", logger="mkdocs.plugins.flatness"):
        mkdocs_hooks.on_pre_build(config)
    assert caplog.records == []  # the real package: every public name documented and listed

    def undocumented(model, data):
        return None

    monkeypatch.setattr(flatness, "evaluate", undocumented)
    with caplog.at_level("WARNING", logger="mkdocs.plugins.flatness"):
        mkdocs_hooks.on_pre_build(config)
    assert [r.getMessage() for r in caplog.records] == [
        "flatness.evaluate is public (flatness.__all__) but has no docstring"
    ]
