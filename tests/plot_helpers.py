"""Synthetic inputs of ``flatness plot``: surface files (``make_surface``: 1-D or 2-D, optional PCA path, accuracy in
percent or fractions, the layout of an old flatness file) and probe JSONs (``make_probe``), and ``check_file``, which
checks a written figure's size and magic bytes. Used by tests/plot/, tests/cli/test_plot.py and
tests/study/test_compare.py; importable by name, as tests/ is on the path."""

import json
import os

import h5py
import numpy as np

MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}


def make_surface(path, two_d=True, scale=1.0, nx=9, ny=7, pca=False, fraction_acc=False):
    x = np.linspace(-1, 1, nx)
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = x
        if two_d:
            y = np.linspace(-1, 1, ny)
            f["ycoordinates"] = y
            X, Y = np.meshgrid(x, y, indexing="ij")
            loss = 0.01 + scale * (3 * X**2 + Y**2)
        else:
            loss = 0.01 + scale * 3 * x**2
        acc = np.clip(1 - 0.1 * loss, 0, 1) * (1 if fraction_acc else 100)
        f["train_loss"], f["train_acc"] = loss, acc
        f["test_loss"], f["test_acc"] = loss + 0.1, acc * 0.97
        if two_d:
            f["train_loss"][0, 0] = np.nan  # a point not computed
        f.attrs["flatness_version"] = "0.1.0"  # an old flatness file: [i, j] order, no layout attribute
        f.attrs["checkpoint"] = "/runs/erm-s0/last.pt"
        f.attrs["direction"] = "random"
        f.attrs["norm"] = "filter"
        f.attrs["split"] = "both"
        f.attrs["samples"] = 100
        if not fraction_acc:
            f.attrs["accuracy_unit"] = "percent"
        if pca:
            g = f.create_group("pca")
            g["explained_variance_ratio"] = np.array([0.7, 0.2])
            g["coordinates"] = np.stack([np.linspace(-0.8, 0, 6), np.linspace(0.5, 0, 6)], axis=1)
            g["epochs"] = np.arange(6)
    return str(path)


def make_probe(path, method="amp", seed=0, eig=(40.0, 30.0, 20.0, 10.0, 5.0), density=True, **extra):
    grid = np.linspace(-5, 50, 200)
    probe = {
        "format": "flatness-probe",
        "flatness_version": "0.1.0",
        "weight_norm": 10.0,
        "distance_from_init": 3.0,
        "sidecar": None,
        "checkpoint": {"path": "/r/last.pt", "method": method, "seed": seed, "dataset": "digits", "epoch": 3},
        "data": {"dataset": "digits", "split": "train", "samples": 100, "batch_size": 50},
        "loss": 0.05,
        "accuracy": 0.99,
        "num_params": 1000,
        "hessian": {
            "method": "lanczos",
            "eigenvalues": list(eig),
            "residuals": [0.0] * len(eig),
            "hvps": 10,
            "seconds": 1.0,
        },
        "trace": {"estimate": 100.0, "stderr": 5.0, "hvps": 10},
    }
    if density:
        probe["density"] = {
            "grid": grid.tolist(),
            "values": np.exp(-((grid / 3) ** 2)).tolist(),
            "nodes": [],
            "weights": [],
        }
    probe.update(extra)
    with open(path, "w") as f:
        json.dump(probe, f)
    return str(path)


def check_file(path, fmt):
    assert os.path.isfile(path) and os.path.getsize(path) > 1000, path
    with open(path, "rb") as f:
        head = f.read(64)
    assert head.startswith(MAGIC[fmt]) or (fmt == "svg" and b"<svg" in head + f.read(2000)), path


def keep_figures(monkeypatch, module):
    """The figures ``module`` saves, kept in the returned list as well, so a test can check what was drawn."""
    from flatness.plot import style

    figures = []

    def keep(fig, path, force=False):
        figures.append(fig)
        return style.save_figure(fig, path, force)

    monkeypatch.setattr(module, "save_figure", keep)
    return figures
