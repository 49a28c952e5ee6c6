"""PNG figures of a run: training curves and gate activations (matplotlib, Agg)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rnnc.errors import TrainError


def _pyplot():
    # PNGs are drawn with Agg whatever the environment says: an MPLBACKEND naming a
    # backend matplotlib does not know (set for a notebook or another tool) made its
    # import fail with a traceback
    saved = os.environ.pop("MPLBACKEND", None)
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise TrainError(f"rnnc plot needs matplotlib, which does not import: {err}",
                         hint="pip install matplotlib") from None
    finally:
        if saved is not None:
            os.environ["MPLBACKEND"] = saved
    return plt


def _save(fig, path: Path) -> None:
    import io

    from rnnc.cli import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_atomic(path, buf.getvalue())


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(values) < width:
        return values
    kernel = np.ones(width) / width
    head = np.cumsum(values[: width - 1]) / np.arange(1, width)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_curves(records: list[dict[str, Any]], metric: str, path: Path, title: str = "",
                clip_norm: float | None = None) -> None:
    """Loss (training steps and validation epochs), the validation metric(s) and the
    global gradient norm before clipping at every step (log scale; `clip_norm`, the
    spec's `clip norm`, is drawn as a dashed line), where exploding or vanishing
    gradients show."""
    steps = [r for r in records if r.get("kind") == "train"]
    vals = [r for r in records if r.get("kind") == "val"]
    if not steps and not vals:
        raise TrainError("the run has no metrics to plot yet",
                         hint="train first; metrics.jsonl fills in as it runs")
    plt = _pyplot()
    fig, (ax_loss, ax_metric, ax_grad) = plt.subplots(1, 3, figsize=(16, 4))
    norms = [(r["step"], float(r["grad_norm"])) for r in steps if "grad_norm" in r]
    if norms:
        gx = np.array([s for s, _ in norms])
        gy = np.array([g for _, g in norms])
        ok = np.isfinite(gy) & (gy > 0)  # a log axis cannot show 0, inf or nan
        ax_grad.plot(gx[ok], gy[ok], color="tab:red", lw=0.8, label="per step")
        if clip_norm is not None:
            ax_grad.axhline(clip_norm, color="black", ls="--", lw=1,
                            label=f"clip norm {clip_norm:g}")
        if ok.any():
            ax_grad.set_yscale("log")
        ax_grad.legend()
    ax_grad.set_xlabel("step")
    ax_grad.set_title("gradient norm (before clipping)")
    ax_grad.grid(alpha=0.3)
    if steps:
        x = np.array([r["step"] for r in steps])
        y = np.array([r["loss"] for r in steps], dtype=float)
        ax_loss.plot(x, y, color="tab:blue", alpha=0.25, lw=0.8, label="train (per step)")
        ax_loss.plot(x, _smooth(y, max(1, len(y) // 50)), color="tab:blue", lw=1.5,
                     label="train (smoothed)")
    if vals:
        vx = [r["step"] for r in vals]
        ax_loss.plot(vx, [r["val_loss"] for r in vals], "o-", color="tab:orange",
                     label="validation")
        keys = [k for k in vals[-1] if k.startswith("val_") and k != "val_loss"
                and k != "val_cross_entropy"]
        keys.sort(key=lambda k: (k != f"val_{metric}", k))
        for k in keys:
            ax_metric.plot(vx, [r.get(k, np.nan) for r in vals], "o-", label=k[4:])
        ax_metric.set_xlabel("step")
        ax_metric.set_title(f"validation {metric}")
        ax_metric.grid(alpha=0.3)
        ax_metric.legend()
    else:
        ax_metric.text(0.5, 0.5, "no validation epoch yet", ha="center", va="center",
                       transform=ax_metric.transAxes)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    if title:
        fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)


def plot_input_grads(curves: dict[str, np.ndarray], path: Path, title: str = "") -> None:
    """One line per parameter set: the mean norm of d loss / d x_t by time step t, on a
    log scale. With a head at the last step, how fast it falls going back in time is
    how fast the error signal vanishes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, values in curves.items():
        values = np.asarray(values, dtype=float)
        ok = np.isfinite(values) & (values > 0)
        ax.plot(np.arange(len(values))[ok], values[ok], lw=1.5, label=label)
    if any((np.asarray(v, dtype=float) > 0).any() for v in curves.values()):
        ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("mean |d loss / d x_t|")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, path)
    plt.close(fig)


def plot_gates(gates: dict[str, np.ndarray], labels: list[str], path: Path,
               title: str = "") -> None:
    """One heatmap per gate: units (rows) by time steps (columns), values in [0, 1]."""
    if not gates:
        raise TrainError("the model has no gates to plot",
                         hint="gates are equations computed by a sigmoid (e.g. the i, f, o of "
                              "an LSTM or the z, r of a GRU)")
    plt = _pyplot()
    names = list(gates)
    steps = next(iter(gates.values())).shape[1]
    width = min(4 + 0.25 * steps, 30)
    fig, axes = plt.subplots(len(names), 1, figsize=(width, 1.2 + 1.6 * len(names)),
                             squeeze=False)
    image = None
    for ax, name in zip(axes[:, 0], names, strict=True):
        values = np.asarray(gates[name])[0].T  # (units, T)
        image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                          interpolation="nearest")
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.set_yticks([])
        ax.set_xticks(range(steps))
        ax.set_xticklabels(labels if len(labels) == steps else range(steps),
                           fontsize=7 if steps > 30 else 9)
    axes[-1, 0].set_xlabel("input at each time step")
    if image is not None:
        fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.02, pad=0.01,
                     label="activation")
    if title:
        fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)
