"""README's "Your own model" example runs as printed: the promise made to a new user is executable."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Your own model"


def section_code(text: str, heading: str) -> str:
    """The first fenced ```python block after ``heading`` and before the next ``## `` heading."""
    start = text.find(heading + "\n")
    if start < 0:
        raise AssertionError(f"README.md has no section {heading!r}")
    body = text[start + len(heading) + 1 :]
    following = re.search(r"^## ", body, flags=re.MULTILINE)
    if following:
        body = body[: following.start()]
    block = re.search(r"^```python\n(.*?)^```\s*$", body, flags=re.MULTILINE | re.DOTALL)
    if block is None:
        raise AssertionError(f"README.md's section {heading!r} has no ```python block")
    return block.group(1)


def test_section_code_finds_only_its_own_block():
    text = (
        "## A\n```python\nprint(1)\n```\n"
        "## Your own model\ntext\n```python\nprint(2)\n```\n"
        "## B\n```python\nprint(3)\n```\n"
    )
    assert section_code(text, SECTION) == "print(2)\n"
    with pytest.raises(AssertionError):
        section_code("## Your own model\nno code here\n## B\n```python\nprint(3)\n```\n", SECTION)


def test_readme_own_model_example_runs(tmp_path):
    code = section_code(README.read_text(encoding="utf-8"), SECTION)
    assert "flatness.evaluate(" in code and "loss_fn=F.mse_loss" in code
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # Run outside the checkout, as a user would, with the project's interpreter.
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"README example failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    assert "nan" not in proc.stdout.lower(), proc.stdout


def test_readme_transformers_example_runs(tmp_path):
    """The "Transformers and Hugging Face" block: a tiny BERT with dict batches, end to end."""
    code = section_code(README.read_text(encoding="utf-8"), "## Transformers and Hugging Face")
    assert "BertForSequenceClassification(config)" in code and "flatness.lanczos(" in code
    script = tmp_path / "example_hf.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"README example failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    assert "nan" not in proc.stdout.lower() and len(proc.stdout.splitlines()) == 6, proc.stdout


ROOT = README.parent
# Built from parts so that this file does not match its own search.
RETIRED = ("../" + "shared", "METRICS" + ".md")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".cfg", ".txt", ".yaml", ".yml"}
SKIP_DIRS = {".git", ".venv", "checkpoints", "data", "build", "dist", "__pycache__", ".eggs"}


def project_text_files():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = pathlib.Path(folder, name)
            if path.suffix in TEXT_SUFFIXES or name == "run":
                yield path


def test_no_file_points_at_the_retired_definitions_page():
    """docs/metrics.md is the project's own reference; nothing may send a reader outside the checkout."""
    hits = []
    for path in project_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        hits += [f"{path.relative_to(ROOT)}: {word}" for word in RETIRED if word in text]
    assert not hits, hits


def test_every_cited_section_of_the_definitions_exists():
    """Every place that cites a section of docs/metrics.md by its quoted name names a heading that is there."""
    lines = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8").splitlines()
    headings = {line.lstrip("#").strip() for line in lines if line.startswith("#")}
    cited = set()
    for path in project_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        cited |= {(str(path.relative_to(ROOT)), m) for m in re.findall(r'metrics\.md`?,? "([^"]+)"', text)}
    assert cited, "expected some citations of docs/metrics.md sections"
    missing = sorted((where, section) for where, section in cited if section not in headings)
    assert not missing, missing


def section_bash(text: str, heading: str) -> str:
    """The first fenced ```bash block after ``heading`` and before the next ``## `` heading."""
    start = text.find(heading + "\n")
    assert start >= 0, f"README.md has no section {heading!r}"
    body = text[start + len(heading) + 1 :]
    following = re.search(r"^## ", body, flags=re.MULTILINE)
    body = body[: following.start()] if following else body
    block = re.search(r"^```bash\n(.*?)^```\s*$", body, flags=re.MULTILINE | re.DOTALL)
    assert block is not None, f"README.md's section {heading!r} has no ```bash block"
    return block.group(1)


def run_bash_section(heading: str, folder: pathlib.Path) -> subprocess.CompletedProcess:
    """Run a section's shell block as a user would: outside the checkout, the project's `flatness` and `python`."""
    script = folder / "example.sh"
    script.write_text(section_bash(README.read_text(encoding="utf-8"), heading), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["bash", "-e", str(script)], cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"README {heading} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def test_readme_regression_example_runs(tmp_path):
    proc = run_bash_section("## Regression", tmp_path)
    probe = json.loads((tmp_path / "runs" / "reg" / "last.probe-train.json").read_text())
    assert probe["data"]["loss"] == "mse" and probe["accuracy"] is None
    assert "accuracy" not in proc.stdout and "mean squared error" in proc.stdout
    assert list((tmp_path / "runs" / "reg").glob("*-1d.png"))


def test_readme_transformers_command_line_example_runs(tmp_path):
    pytest.importorskip("transformers")
    proc = run_bash_section("## Transformers and Hugging Face (command line)", tmp_path)
    probe = json.loads((tmp_path / "runs" / "bert" / "last.probe-train.json").read_text())
    assert probe["hessian"]["converged"] and probe["accuracy"] is not None
    assert "nan" not in proc.stdout.lower(), proc.stdout


README_HEADING = "## Your own model (command line)"


def readme_bash_block(text: str, heading: str) -> str:
    """The first fenced ```bash block after ``heading`` and before the next ``## `` heading."""
    start = text.find(heading + "\n")
    assert start >= 0, f"README.md has no section {heading!r}"
    body = text[start + len(heading) + 1 :]
    following = re.search(r"^## ", body, flags=re.MULTILINE)
    body = body[: following.start()] if following else body
    block = re.search(r"^```bash\n(.*?)^```\s*$", body, flags=re.MULTILINE | re.DOTALL)
    assert block is not None, f"README.md's section {heading!r} has no ```bash block"
    return block.group(1)


def test_readme_command_line_example_runs(tmp_path):
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    script = readme_bash_block(open(readme, encoding="utf-8").read(), README_HEADING)
    assert "--model mynet.py:make" in script and "mynet.pt2" in script
    (tmp_path / "example.sh").write_text(script)
    # As a user would run it: outside the checkout, `flatness` and `python` from the project's environment.
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(
        ["bash", "-e", str(tmp_path / "example.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"README example failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    probes = sorted(p.name for p in tmp_path.rglob("*.probe-train.json"))
    assert probes == ["last.probe-train.json", "mynet.probe-train.json", "weights.probe-train.json"], probes
    same = [
        json.loads((tmp_path / name).read_text())["hessian"]["eigenvalues"][0]
        for name in ("weights.probe-train.json", "mynet.probe-train.json")
    ]
    assert same[0] == pytest.approx(same[1], rel=1e-4)  # the same weights, as a state_dict and as a .pt2
