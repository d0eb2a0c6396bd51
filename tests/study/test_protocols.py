"""The matched-loss protocol and the study's training options, end to end with tiny settings.

* the matched checkpoint is the first whose whole-training-set loss, recomputed here from every saved
  epoch checkpoint by a plain loop, is <= the threshold;
* `flatness experiment` with --lr/--schedule/--epochs records them in every run's config and trains with
  them (the logged learning rate), writes both protocols' comparisons and the radius-profile figures.
"""

import json
import os
import shutil

import pytest
import torch


def _whole_train_loss(checkpoint: str) -> float:
    """Mean cross-entropy over the whole MNIST-1D training split, in float64, by a plain loop."""
    from flatness.data.datasets import get_dataset
    from flatness.sources.loading import load_target

    model = load_target(checkpoint).model.double().eval()
    data = get_dataset("mnist1d", "train", augment=False)
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), 1000):
            xs, ys = zip(*(data[i] for i in range(start, min(start + 1000, len(data)))))
            x, y = torch.stack(xs).double(), torch.as_tensor(ys)
            total += float(torch.nn.functional.cross_entropy(model(x), y, reduction="sum"))
            n += len(ys)
    return total / n


def test_matched_checkpoint_is_the_first_epoch_at_or_below_the_loss(tmp_path):
    from flatness.formats.checkpoint import MATCHED, read_checkpoint, snapshot_name
    from flatness.training.config import build_config
    from flatness.training.loop import train

    torch.set_num_threads(1)
    options = {"dataset": "mnist1d", "epochs": 6, "save_every": 1, "device": "cpu", "seed": 0}
    first = str(tmp_path / "first")
    train(build_config(options), out_dir=first, progress=False, verbose=False)
    losses = [_whole_train_loss(os.path.join(first, snapshot_name(e))) for e in range(1, 7)]
    # a threshold met first at a middle epoch (the same run, deterministic, trained again with it)
    target = 3 if losses[2] < min(losses[:2]) else int(torch.tensor(losses).argmin()) + 1
    threshold = (losses[target - 1] + min(losses[: target - 1])) / 2 if target > 1 else losses[0] * 1.01
    second = str(tmp_path / "second")
    train(build_config({**options, "match_loss": threshold}), out_dir=second, progress=False, verbose=False)
    expected = next(e for e in range(1, 7) if _whole_train_loss(os.path.join(second, snapshot_name(e))) <= threshold)
    assert expected == target and expected > 1  # not trivially the first epoch
    matched = read_checkpoint(os.path.join(second, MATCHED))
    assert matched["epoch"] == expected
    snapshot = read_checkpoint(os.path.join(second, snapshot_name(expected)))
    for key, value in snapshot["model_state"].items():
        assert torch.equal(value, matched["model_state"][key])
    # training went on to the budget
    assert read_checkpoint(os.path.join(second, "last.pt"))["epoch"] == 6


@pytest.fixture(scope="module")
def option_study(tmp_path_factory):
    from click.testing import CliRunner

    from flatness.cli.main import main

    out = tmp_path_factory.mktemp("opts") / "study"
    args = ["experiment", "--quick", "--methods", "erm,amp", "--seeds", "0,1", "--out", str(out)]
    args += ["--device", "cpu", "--no-progress", "--workers", "1", "--threads", "1"]
    args += ["--lr", "0.07", "--schedule", "constant", "--epochs", "2", "--epsilon", "0.3"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, result


def test_experiment_records_and_applies_training_options(option_study):
    out, _ = option_study
    for run in ("erm-s0", "erm-s1", "amp-s0", "amp-s1"):
        with open(out / "runs" / run / "config.json", encoding="utf-8") as handle:
            config = json.load(handle)
        assert (config["lr"], config["schedule"], config["epochs"]) == (0.07, "constant", 2)
        assert config["epsilon"] == 0.3 and config["match_loss"] == 5.0
        with open(out / "runs" / run / "metrics.jsonl", encoding="utf-8") as handle:
            epochs = [json.loads(line) for line in handle if line.strip()]
        assert [e["lr"] for e in epochs] == [0.07, 0.07]  # constant, as asked, for both epochs
    stored = json.loads((out / "experiment.json").read_text(encoding="utf-8"))["config"]
    assert stored["train_overrides"]["lr"] == 0.07 and stored["epochs"] == 2


def test_both_protocols_compared_in_one_schema_and_profiles_decode(option_study):
    import matplotlib.image

    out, result = option_study
    fixed = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    matched = json.loads((out / "matched-loss" / "comparison.json").read_text(encoding="utf-8"))
    assert set(fixed) == set(matched) and fixed["methods"] == matched["methods"]
    assert [r["key"] for r in fixed["rows"]] == [r["key"] for r in matched["rows"]]
    for row in fixed["rows"]:
        paired = row["versus"]["amp"]["paired"]
        assert paired["n"] == 2 and {"ci_low", "p_t", "p_wilcoxon", "wins", "p_t_holm"} <= set(paired)
    for name in ("radius-profile-fixed.png", "radius-profile-matched.png"):
        image = matplotlib.image.imread(out / "figures" / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert "Matched loss: AMP was flatter" in result.output or "Matched loss: AMP was not" in result.output
    report = (out / "REPORT.md").read_text(encoding="utf-8")
    assert "Primary measures, declared before the data" in report and "radius-profile-matched.png" in report


def test_a_run_that_never_reached_the_loss_is_left_out_and_named(option_study):
    from flatness.study.protocols import MATCHED_RUN_DIR, matched_records
    from flatness.study.runs import load_run_dir

    out, _ = option_study
    copy = out.parent / "copy"
    shutil.copytree(out / "runs", copy)
    shutil.rmtree(copy / "amp-s1" / MATCHED_RUN_DIR)
    records = [load_run_dir(str(copy / r)) for r in ("erm-s0", "erm-s1", "amp-s0", "amp-s1")]
    matched, unreached = matched_records(records)
    assert [r.label for r in unreached] == ["AMP seed 1"]
    assert [r.label for r in matched] == ["ERM seed 0", "ERM seed 1", "AMP seed 0"]
    assert all(r.epochs[-1]["epoch"] == r.probe["checkpoint"]["epoch"] for r in matched)
