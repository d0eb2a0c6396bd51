"""flatness as users install it: build an sdist and a wheel (``python -m build``, the wheel built from the
sdist, so a file the sdist misses fails here), check both with ``twine check``, install the wheel into a
fresh virtualenv, and run every CLI command from that venv's ``bin/flatness`` in a folder outside the
repository.

The wheel is installed without dependencies; the heavy ones (torch, h5py, ...) come from the project venv
through a ``.pth`` line naming only its site-packages, so the source tree is never importable and a module
missing from the wheel (a subpackage find_packages missed, or cli/ not mapped to flatness.cli) fails here."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a wheel build reads; copied so that the build's build/ and *.egg-info stay out of the shared tree.
SOURCES = ("setup.py", "pyproject.toml", "README.md", "LICENSE", "flatness", "cli")


def run(cmd, cwd, env=None, timeout=120):
    """Run ``cmd``; fail the test with its output when it exits non-zero."""
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin/flatness of a fresh venv holding only the built wheel, its environment, a folder outside the repo)."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if os.path.isdir(os.path.join(REPO, name)):
            shutil.copytree(os.path.join(REPO, name), src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(os.path.join(REPO, name), src / name)
    # --no-isolation: the build backend of the project venv (no download); the wheel is built from the sdist.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", root / "dist", src], cwd=root, timeout=300)
    (wheel,) = (root / "dist").glob("flatness-*.whl")
    (sdist,) = (root / "dist").glob("flatness-*.tar.gz")

    target = root / "venv"
    venv.create(target, with_pip=False)  # the project's pip installs into it (pip --python): seconds, not a bootstrap
    python = target / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], cwd=root)
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).strip()
    # The dependencies only: a .pth line adds a folder to sys.path but runs none of the .pth files inside it,
    # so the project venv's editable-install hook (which would map flatness to the source tree) stays off.
    # torch's folder too, for a venv that reaches its packages through a .pth of its own (a worktree's venv).
    import torch

    folders = dict.fromkeys([sysconfig.get_paths()["purelib"], os.path.dirname(os.path.dirname(torch.__file__))])
    with open(os.path.join(site, "zz-project-dependencies.pth"), "w") as handle:
        handle.write("".join(folder + "\n" for folder in folders))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    work = root / "work"
    work.mkdir()
    return {
        "wheel": wheel,
        "sdist": sdist,
        "flatness": target / "bin" / "flatness",
        "python": python,
        "env": env,
        "work": work,
        "venv": target,
    }


def test_sdist_and_wheel_pass_twine_check_and_carry_the_metadata(installed):
    from flatness.version import __version__

    out = run([sys.executable, "-m", "twine", "check", "--strict", installed["sdist"], installed["wheel"]], cwd=REPO)
    assert out.count("PASSED") == 2, out
    assert installed["wheel"].name.startswith(f"flatness-{__version__}-py3-none-any")
    sizes = {p.name: p.stat().st_size for p in (installed["sdist"], installed["wheel"])}
    print("sizes (bytes):", sizes)
    metadata = zipfile.ZipFile(installed["wheel"]).read(f"flatness-{__version__}.dist-info/METADATA").decode()
    for field in ("Name: flatness", f"Version: {__version__}", "License-Expression: MIT", "Requires-Python: >=3.10"):
        assert field in metadata, field
    for extra in ("test", "docs", "ray", "safetensors", "tensorboard"):
        assert f"Provides-Extra: {extra}" in metadata, extra
    assert "Requires-Dist: torch>=2.2" in metadata
    assert "# flatness" in metadata  # the README is the long description


def test_installed_version_names_flatness_torch_and_the_device(installed):
    from flatness.version import __version__

    out = run([installed["flatness"], "--version"], cwd=installed["work"], env=installed["env"]).strip()
    assert out.startswith(f"flatness {__version__} (torch "), out
    assert "device cpu" in out or "device cuda" in out, out


def test_wheel_ships_every_subpackage_and_the_cli(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    packages = sorted(
        os.path.relpath(d, REPO) for d, _, files in os.walk(os.path.join(REPO, "flatness")) if "__init__.py" in files
    )
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert packages and missing == []
    cli_modules = sorted(f for f in os.listdir(os.path.join(REPO, "cli")) if f.endswith(".py"))
    assert [m for m in cli_modules if f"flatness/cli/{m}" not in names] == []
    assert not any(n.startswith(("cli/", "tests/")) for n in names)

    where = run(
        [
            installed["python"],
            "-c",
            "import sys, flatness, flatness.cli.main; print(flatness.__file__);"
            "print(sys.modules['flatness.cli.main'].__file__)",
        ],
        cwd=installed["work"],
        env=installed["env"],
    ).split()
    for path in where:
        assert os.path.realpath(path).startswith(os.path.realpath(installed["venv"])), where
        assert not os.path.realpath(path).startswith(os.path.realpath(REPO) + os.sep), where


def test_installed_cli_trains_probes_surfaces_plots_and_compares(installed):
    flatness, env, work = installed["flatness"], installed["env"], installed["work"]

    def cli(*args):
        began = time.perf_counter()
        out = run([flatness, *args], cwd=work, env=env)
        print(f"flatness {args[0]}: {time.perf_counter() - began:.1f} s")
        return out

    # One call per command: each start imports torch and friends (seconds), which dominates the cost.
    cli(
        "train",
        "--dataset",
        "digits",
        "--model",
        "mlp",
        "--depth",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        "runs/erm",
    )
    assert (work / "runs" / "erm" / "last.pt").is_file()
    cli(
        "probe",
        "runs/erm/last.pt",
        "--samples",
        "64",
        "--top-k",
        "2",
        "--max-iter",
        "20",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        "runs/erm/probe.json",
    )
    eigenvalues = json.loads((work / "runs" / "erm" / "probe.json").read_text())["hessian"]["eigenvalues"]
    assert len(eigenvalues) == 2 and eigenvalues[0] >= eigenvalues[1]
    cli(
        "surface",
        "runs/erm/last.pt",
        "--x=-1:1:3",
        "--y=-1:1:3",
        "--samples",
        "64",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        "erm-2d.h5",
    )
    cli("plot", "erm-2d.h5", "--out", "figures")
    assert any(p.suffix == ".png" and p.stat().st_size > 1000 for p in (work / "figures").iterdir())
    cli("compare", "runs/erm", "--out", "comparison", "--json", "comparison.json", "--no-figures")
    summary = json.loads((work / "comparison.json").read_text())
    # The installed compare read the installed probe's numbers, not something else.
    assert summary["methods"] == ["erm"] and len(summary["runs"]) == 1
    assert summary["runs"][0]["values"]["lambda_1"] == eigenvalues[0]
