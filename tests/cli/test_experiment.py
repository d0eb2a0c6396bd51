"""flatness experiment on a user's model and an npz."""

import json

import numpy as np
from user_model_helpers import _npz


def test_experiment_on_a_user_model_and_npz(cli, user, tmp_path):
    out, npz = (
        tmp_path / "study",
        _npz(tmp_path / "big.npz", x_train=np.ones((130, 4), np.float32), y_train=np.arange(130) % 3),
    )  # --quick trains in batches of 128
    result = cli(
        [
            "experiment",
            "--model",
            user["model"],
            "--model-args",
            '{"width": 4}',
            "--dataset",
            npz,
            "--quick",
            "--seeds",
            "0",
            "--grid",
            "3",
            "--samples",
            "16",
            "--no-progress",
            "--out",
            out,
        ]
    )
    assert result.exit_code == 0, result.output
    probe_json = json.loads((out / "runs" / "amp-s0" / "probe.json").read_text())
    assert probe_json["checkpoint"]["model"] == user["model"] and probe_json["data"]["samples"] == 16
    assert (out / "REPORT.md").is_file() and (out / "runs" / "erm-s0" / "surface-2d.h5").is_file()
