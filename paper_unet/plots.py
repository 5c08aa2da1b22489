"""Figures for results/: weight maps (paper Fig. 3), augmented samples, and more."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_weight_map", "plot_augmented_samples", "plot_loss_curves", "plot_variant_crops"]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_weight_map(image: np.ndarray, label: np.ndarray, weights: np.ndarray, path: str | Path,
                    crop: tuple[slice, slice] = (slice(0, 256), slice(0, 256))) -> Path:
    """Raw image, labels and the Eq. 2 weight map side by side (like paper Fig. 3 a, c, d)."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    axes[0].imshow(image[crop], cmap="gray")
    axes[0].set_title("ISBI 2012 training slice")
    axes[1].imshow(label[crop] > 0, cmap="gray")
    axes[1].set_title("labels (white = cell)")
    shown = axes[2].imshow(weights[crop], cmap="jet")
    axes[2].set_title("weight map w(x), Eq. 2 (w0=10, sigma=5)")
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    return _save(fig, path)


def plot_augmented_samples(samples: list[tuple], path: str | Path) -> Path:
    """Rows of (input tile with the output area outlined, labels, weights) per sample."""
    fig, axes = plt.subplots(len(samples), 3, figsize=(9, 3 * len(samples)))
    axes = np.atleast_2d(axes)
    for row, (image, label, weight) in zip(axes, samples):
        image = np.asarray(image).squeeze()
        margin = (image.shape[-1] - np.asarray(label).shape[-1]) / 2
        row[0].imshow(image, cmap="gray", vmin=0, vmax=1)
        row[0].add_patch(plt.Rectangle((margin - 0.5, margin - 0.5), label.shape[-1], label.shape[-2],
                                       fill=False, edgecolor="yellow", linewidth=1))
        row[1].imshow(np.asarray(label), cmap="gray")
        row[2].imshow(np.asarray(weight), cmap="jet")
        for ax in row:
            ax.axis("off")
    axes[0, 0].set_title("input tile (output area)")
    axes[0, 1].set_title("labels")
    axes[0, 2].set_title("weights")
    return _save(fig, path)


def plot_loss_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                     validations: dict[str, list[dict]] | None = None, title: str = "") -> Path:
    """Training loss per run (raw, faint, and a moving average), with validation Rand errors beside it."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.2))
    for (name, (iterations, loss)), colour in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        ax_loss.plot(iterations, loss, color=colour, alpha=0.25, linewidth=0.8)
        window = min(10, len(loss))
        if window:
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            ax_loss.plot(iterations[window - 1:], smooth, color=colour, label=name)
        for row in (validations or {}).get(name, []):
            ax_val.scatter(row["iteration"], row["rand_error"], color=colour, marker="o")
            ax_val.scatter(row["iteration"], row["pixel_error"], color=colour, marker="x")
        ax_val.plot([], [], color=colour, marker="o", linestyle="", label=f"{name}: Rand (o), pixel (x)")
    ax_loss.set(xlabel="iteration", ylabel="weighted cross entropy (mean of 10 logged values)", title=title)
    ax_val.set(xlabel="iteration", ylabel="validation error (no TTA)", title="held-out block", yscale="log")
    ax_loss.legend()
    ax_val.legend(fontsize=8)
    return _save(fig, path)


def plot_variant_crops(folder: str | Path, names: list[str], path: str | Path) -> Path:
    """The kept crops side by side: image, labels, then each variant's P(cell) (8-bit PNGs in ``folder``)."""
    from PIL import Image

    folder = Path(folder)
    panels = [("image", "_image"), ("labels", "_labels"), *((name, name) for name in names)]
    columns = min(5, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, (title, stem) in zip(np.atleast_1d(axes).ravel(), panels):
        ax.imshow(np.asarray(Image.open(folder / f"{stem}.png")), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
    return _save(fig, path)
