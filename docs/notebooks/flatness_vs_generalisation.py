# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Does flatness predict generalisation?
#
# Jiang et al. (2020, "Fantastic generalization measures and where to find them") train many models over
# a grid of hyperparameters and ask which measures rank them by their generalisation gap. `flatness sweep`
# trains and probes every cell of such a grid; `flatness correlate` computes Kendall's τ of every measure
# (flatness measures and norm/margin baselines) against the gap, with bootstrap intervals and Holm's
# adjustment, and the granulated Ψ (how consistently a measure ranks cells when one hyperparameter
# changes at a time).
#
# This notebook runs a **tiny** sweep (4 cells: ERM and SAM at two learning rates, 2 epochs, cheap
# probes) so that it finishes in seconds; with 4 cells no correlation can be significant, and the verdict
# says so. The real question needs the default grid: `flatness sweep --out DIR && flatness correlate DIR`
# (72 cells, every one trained to the same training loss).

# %%
import warnings

# tqdm (flatness's progress bars) tells a kernel without ipywidgets so on import; the bars are off here anyway
warnings.filterwarnings("ignore", message="IProgress not found")

import csv
import os
import tempfile

import torch
from IPython.display import Image, Markdown, display

from flatness.sweep.correlate import correlate
from flatness.sweep.run import SweepSettings, run_sweep

torch.set_num_threads(1)
work = tempfile.mkdtemp(prefix="flatness-sweep-")
data_dir = os.path.join(tempfile.gettempdir(), "flatness-notebook-data")  # MNIST-1D, generated once

# %% [markdown]
# ## The sweep
#
# `quick=True` is `flatness sweep --quick`: 2 epochs per cell and the cheapest probe that still measures
# everything. Each cell is an ordinary run folder under `OUT/cells/`; a rerun skips finished cells.
# `workers=1` runs the cells in this process; `--workers N`, `--engine ray` or `--shard I/N` spread them.

# %%
out = os.path.join(work, "sweep")
settings = SweepSettings(
    out=out,
    grid="method=erm,sam lr=0.02,0.2",
    seeds="0",
    quick=True,
    workers=1,
    device="cpu",
    data_dir=data_dir,
    progress=False,
)
done = run_sweep(settings, echo=None)
print(f"{done['done']} cells done, {done['failed']} failed, {done['seconds']:.0f} s")

with open(done["table"], encoding="utf-8") as handle:
    rows = list(csv.DictReader(handle))
columns = ["cell", "train_acc", "test_acc", "gap", "lambda_1", "trace", "weight_norm"]
columns = [c for c in columns if c in rows[0]]
table = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
for row in rows:
    cells = [row[c] if c == "cell" else f"{float(row[c]):.4g}" if row[c] else "" for c in columns]
    table.append("| " + " | ".join(cells) + " |")
display(Markdown("\n".join(table)))

# %% [markdown]
# ## The correlation table
#
# One row per measure: Kendall's τ against the gap (sign-adjusted, so that higher always means "predicts
# as expected"), its bootstrap interval and Holm-adjusted p-value, and Ψ.

# %%
summary = correlate(out, draws=200)
with open(summary["files"]["markdown"], encoding="utf-8") as handle:
    report = handle.read()
start = report.find("|")  # the table and what follows, without the report's title block
display(Markdown(report[start:] if start >= 0 else report))

# %% [markdown]
# ## The figures
#
# τ of every measure with its interval (bars), and each measure against the gap over the cells (scatter).

# %%
for key in ("bars", "scatter"):
    if key in summary["files"]:
        display(Image(filename=summary["files"][key], width=720))

# %% [markdown]
# ## The verdict

# %%
display(Markdown("\n".join(f"- {sentence}" for sentence in summary["verdict"])))
