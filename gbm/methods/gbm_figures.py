"""GBM's own figures (SPEC §10): its forward process on a dataset and on a 2-D toy set.

Each takes the GBM SDE to draw (``gbm.methods.gbm`` passes its default, the paper's) and returns a matplotlib
figure; ``gbm report forward`` and ``gbm report toy`` save it (PNG and PDF) for the method that declares it
(``Method.forward_figure``, ``Method.toy_figure``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def forward_histograms(sde, data_npz: Path, times: list[float], images: int = 1000, seed: int = 0):
    """Histograms of log x_t under the GBM forward kernel of ``sde`` (its prior fitted here to ``images``
    training images), against the fitted log-normal prior at T."""
    import matplotlib.pyplot as plt

    from gbm.data import load_prepared
    from gbm.pixels import to_positive

    data = load_prepared(data_npz)
    train = data.images("train")
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(train), generator=g)[:images].numpy()
    x0 = to_positive(torch.as_tensor(train[np.sort(index)])).double()
    sde = sde.with_prior_from_data(x0)
    fig, axes = plt.subplots(1, len(times), figsize=(2.2 * len(times), 2.2))
    grid = np.linspace(-4, 4.5, 400)
    m, s = float(sde.prior_log_mean[0]), float(sde.prior_log_std[0])
    prior = np.exp(-0.5 * ((grid - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
    for ax, t in zip(np.atleast_1d(axes), times):
        z = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        xt = sde.perturb(x0, torch.full((x0.shape[0],), float(t), dtype=x0.dtype), z) if t > 0 else x0
        ax.hist(xt.log().flatten().numpy(), bins=120, range=(grid[0], grid[-1]), density=True, color="tab:blue",
                alpha=0.8)
        ax.plot(grid, prior, "k--", lw=1, label="log-normal prior at T")
        ax.set_title(f"t = {t:g}")
        ax.set_xlabel("log $x_t$")
    np.atleast_1d(axes)[0].set_ylabel("density")
    np.atleast_1d(axes)[-1].legend(loc="upper right", fontsize=7)
    fig.suptitle(f"{data.meta.get('name', Path(data_npz).stem)}: GBM forward process "
                 f"(σ = {sde.sigma}, μ = {sde.mu:g}) → log-normal(m = {m:.3f}, s = {s:.3f})", y=1.03)
    return fig


def toy_figure(sde, paths: int = 64, points: int = 2000, steps: int = 200, seed: int = 0):
    """2-D toy: positive two-spirals, forward paths of the GBM ``sde`` (exact solution on a grid), the log-normal
    end."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from gbm.data.toy import two_spirals

    g = torch.Generator().manual_seed(seed)
    data = two_spirals(points, generator=g).double()
    t = torch.linspace(0, sde.T, steps + 1, dtype=torch.float64)
    dw = torch.randn(paths, steps, 2, generator=g, dtype=torch.float64) * (t[1] - t[0]).sqrt()
    w = torch.cat([torch.zeros(paths, 1, 2, dtype=torch.float64), dw.cumsum(dim=1)], dim=1)
    x0 = data[:paths]
    trajectories = x0[:, None] * torch.exp(sde.log_drift * t[None, :, None] + sde.sigma * w)
    z = torch.randn(data.shape, generator=g, dtype=torch.float64)
    end = sde.perturb(data, torch.full((points,), sde.T, dtype=torch.float64), z)
    logs = data.log()
    m = (logs.mean(dim=0) + sde.log_drift * sde.T).numpy()
    s = (sde.sigma**2 * sde.T + logs.var(dim=0, unbiased=False)).sqrt().numpy()

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5), layout="constrained")
    axes[0].scatter(*data.numpy().T, s=2, alpha=0.5)
    axes[0].set_title("data: positive two spirals")
    for path in trajectories.numpy():
        axes[1].plot(*path.T, lw=0.5, alpha=0.6)
    axes[1].scatter(*x0.numpy().T, s=6, c="k", zorder=3, label="$x_0$")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_title("GBM forward paths $dX = \\mu X dt + \\sigma X dW$")
    axes[1].legend(fontsize=7)
    lo, hi = np.quantile(end.numpy(), [0.005, 0.995])
    u = np.geomspace(max(lo, 1e-3), hi, 200)
    uu, vv = np.meshgrid(u, u)
    density = (np.exp(-0.5 * ((np.log(uu) - m[0]) / s[0]) ** 2 - 0.5 * ((np.log(vv) - m[1]) / s[1]) ** 2)
               / (2 * math.pi * s[0] * s[1] * uu * vv))
    axes[2].contour(uu, vv, np.log(density + 1e-12), levels=12, cmap="viridis", linewidths=0.7)
    axes[2].scatter(*end.numpy().T, s=2, alpha=0.4, c="tab:red", label="$x_T$")
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_title("$x_T$ and the log-normal end density")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    return fig
