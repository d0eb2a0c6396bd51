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
# # Measure your own model
#
# Every measurement in flatness is a function of **(model, data, loss)**: any `nn.Module`, data as a
# `DataLoader`, an `(x, y)` pair or a `Dataset`, and any `loss_fn(outputs, targets)` (cross-entropy unless
# told otherwise). This notebook trains a small CNN on generated images, then measures its Hessian
# spectrum, its sharpness and a 2-D loss surface. It runs on a CPU in seconds; the same calls work on a
# ResNet on a GPU. Definitions of every number: [Measures](../metrics.md).

# %%
import warnings

# tqdm (flatness's progress bars) tells a kernel without ipywidgets so on import; the bars are off here anyway
warnings.filterwarnings("ignore", message="IProgress not found")

import io

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from IPython.display import Image, display
from matplotlib.figure import Figure

import flatness


def show(fig: Figure) -> None:
    """Display a matplotlib figure as a PNG (any backend, in a notebook or in the built site)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    display(Image(data=buffer.getvalue()))


# %% [markdown]
# ## Data and model
#
# 384 one-channel 12×12 images of three classes: a horizontal bar, a vertical bar or a diagonal, at a
# random position, with noise. Any tensors of your own take their place.

# %%
torch.manual_seed(0)
torch.set_num_threads(1)  # a tiny model: one thread is the fastest, and leaves the other cores alone


def make_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy 12x12 images of a horizontal bar (0), a vertical bar (1) or a diagonal (2)."""
    y = torch.randint(0, 3, (n,), generator=generator)
    x = 0.3 * torch.randn(n, 1, 12, 12, generator=generator)
    offsets = torch.randint(2, 10, (n,), generator=generator)
    for i in range(n):
        k = int(offsets[i])
        if y[i] == 0:
            x[i, 0, k, 2:10] += 1.0
        elif y[i] == 1:
            x[i, 0, 2:10, k] += 1.0
        else:
            x[i, 0].diagonal().add_(1.0)
    return x, y


gen = torch.Generator().manual_seed(0)
x_train, y_train = make_images(384, gen)
x_test, y_test = make_images(192, gen)
model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(8, 8, 3, padding=1),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(2),
    nn.Flatten(),
    nn.Linear(32, 3),
)
print(sum(p.numel() for p in model.parameters()), "parameters")

# %% [markdown]
# ## Train it (any way you like)
#
# A plain loop with flatness's `SAM` optimizer, a drop-in wrapper around SGD (`AMP` works the same way).
# flatness does not need to train the model: it measures whatever weights you give it.

# %%
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train), batch_size=64, shuffle=True)
optimizer = flatness.SAM(model.parameters(), lr=0.1, momentum=0.9, rho=0.05)
for epoch in range(1, 13):
    for bx, by in loader:

        def closure(bx=bx, by=by):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(bx), by)
            loss.backward()
            return loss

        optimizer.step(closure)
    if epoch % 4 == 0:
        train_loss, train_acc = flatness.evaluate(model, (x_train, y_train))
        test_loss, test_acc = flatness.evaluate(model, (x_test, y_test))
        print(f"epoch {epoch}: train loss {train_loss:.3f} acc {train_acc:.3f}", end=", ")
        print(f"test loss {test_loss:.3f} acc {test_acc:.3f}")

# %% [markdown]
# ## The Hessian spectrum
#
# `HessianOperator` is the exact full-data Hessian of the mean loss as a linear operator (one
# Hessian-vector product per call, never the matrix). `lanczos` finds its top eigenvalues with residuals;
# `estimate_trace` its trace (Hutchinson); `slq` its spectral density (stochastic Lanczos quadrature).

# %%
train_data = (x_train, y_train)
op = flatness.HessianOperator(model, train_data)
top = flatness.lanczos(op, k=5, tol=1e-3)
print("top eigenvalues:", np.round(top.eigenvalues, 4))
print("relative residuals:", np.format_float_scientific(max(top.residuals), 1), "| HVPs:", top.hvps)
trace = flatness.estimate_trace(op, samples=24, method="hutch++")
print(f"trace: {trace.estimate:.3f} ± {trace.stderr:.3f}  (sum of all {op.dim} eigenvalues)")

# %%
density = flatness.slq(op, steps=30, vectors=1)
nodes, weights = density.flat()
fig = Figure(figsize=(6, 3.2))
ax = fig.subplots()
grid = np.linspace(nodes.min() - 0.5, nodes.max() + 0.5, 600)
sigma = 0.02 * (nodes.max() - nodes.min())
curve = (weights[:, None] * np.exp(-((grid[None, :] - nodes[:, None]) ** 2) / (2 * sigma**2))).sum(0)
ax.semilogy(grid, curve / (sigma * np.sqrt(2 * np.pi)) + 1e-8)
for value in top.eigenvalues:
    ax.axvline(value, color="C3", lw=0.8, ls="--")
ax.set_xlabel("eigenvalue")
ax.set_ylabel("density (log scale)")
ax.set_title("Hessian spectral density (SLQ), top eigenvalues dashed")
show(fig)

# %% [markdown]
# ## Sharpness
#
# `measure_sharpness` gives every metric of [Measures](../metrics.md) at the radii you ask: here the
# worst-case loss increase in an L2 ball of radius ρ around the weights (SAM's sharpness) and the
# average-case increase under Gaussian noise of the same scale.

# %%
results = flatness.measure_sharpness(model, train_data, metrics=["worst_case", "average_case"], rho=[0.01, 0.05])
for result in results:
    print(f"{result.metric:>12}  rho {result.rho:<5} {result.value:.5f}")

# %% [markdown]
# ## A 2-D loss surface
#
# `loss_surface` evaluates the loss on a grid around the weights along two random filter-normalised
# directions (Li et al. 2018), in memory; the model's weights are restored bit for bit afterwards.
# `flatness surface` does the same into a resumable HDF5 file.

# %%
surface = flatness.loss_surface(model, train_data, xs="-1:1:13", ys="-1:1:13", seed=0)
X, Y = np.meshgrid(surface["xcoordinates"], surface["ycoordinates"])
fig = Figure(figsize=(5, 4.2))
ax = fig.subplots()
levels = np.geomspace(surface["loss"].min(), surface["loss"].max(), 15)
contours = ax.contour(X, Y, surface["loss"], levels=levels, cmap="viridis")
ax.clabel(contours, fontsize=7, fmt="%.2f")
ax.plot(0, 0, "r*", ms=10)
ax.set_xlabel("direction 1")
ax.set_ylabel("direction 2")
ax.set_title("training loss around the trained weights")
show(fig)
print(f"loss at the centre {surface['loss'][6, 6]:.4f}, at the grid's corners up to {surface['loss'].max():.2f}")

# %% [markdown]
# ## Everything at once
#
# `measure` is what `flatness probe` writes: loss, accuracy, weight norm, the spectrum and, when asked,
# trace, density and sharpness, all on the same data (`ProbeSettings` holds the budgets).

# %%
settings = flatness.ProbeSettings(trace_samples=24, progress=False)
probe = flatness.measure(model, train_data, top_k=3, trace=True, settings=settings)
print({key: probe[key] for key in ("loss", "accuracy", "num_params", "weight_norm")})
print("eigenvalues:", np.round(probe["hessian"]["eigenvalues"], 4), "| trace:", round(probe["trace"]["estimate"], 3))
