"""Pictures and tables of a run: sample grid, training curves, metrics table."""

from __future__ import annotations

import json
import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from percdepth_jax.edges import EDGE_METRIC_NAMES, depth_boundary_errors  # noqa: E402
from percdepth_jax.metrics import METRIC_NAMES  # noqa: E402

# Columns of tables and the order of logged evaluation metrics.
METRIC_ORDER = METRIC_NAMES + EDGE_METRIC_NAMES


def sample_grid(samples: Sequence[dict[str, np.ndarray]], path: str | pathlib.Path,
                title: str = "") -> None:
  """Rows of RGB | ground truth | prediction | absolute error.

  Ground truth and prediction share one colour scale (metres, one colour
  bar); the error has its own. Holes in the ground truth are shown in grey and
  excluded from the error. Beside each row: its depth-boundary errors
  (iBims-1 dbe_acc / dbe_com in pixels, whole frame).
  """
  if not samples:
    raise ValueError("sample_grid needs at least one sample")
  gts = [np.where(s["valid"], s["depth"], np.nan) for s in samples]
  lo = float(min(np.nanmin(g) for g in gts if np.isfinite(g).any()))
  hi = float(max(np.nanmax(g) for g in gts if np.isfinite(g).any()))
  errors = [np.abs(s["pred"] - g) for s, g in zip(samples, gts)]
  err_hi = float(max(np.nanmax(e) if np.isfinite(e).any() else 0.0 for e in errors)) or 1.0
  n = len(samples)
  h, w = samples[0]["depth"].shape
  fig, axes = plt.subplots(n, 4, figsize=(4 * 3.2, n * 3.2 * h / w + 0.8),
                           squeeze=False, constrained_layout=True)
  cmap = plt.get_cmap("turbo_r").copy()
  cmap.set_bad("0.5")
  for row, (s, gt, err) in enumerate(zip(samples, gts, errors)):
    axes[row, 0].imshow(s["image"])
    depth_im = axes[row, 1].imshow(gt, cmap=cmap, vmin=lo, vmax=hi)
    axes[row, 2].imshow(s["pred"], cmap=cmap, vmin=lo, vmax=hi)
    err_im = axes[row, 3].imshow(err, cmap="magma", vmin=0.0, vmax=err_hi)
    for ax in axes[row]:
      ax.set_xticks([])
      ax.set_yticks([])
    edge_errors = depth_boundary_errors(s["depth"], s["pred"], s["valid"])
    axes[row, 0].set_ylabel("dbe_acc {:.2f}\ndbe_com {:.2f} px".format(*edge_errors)
                            if edge_errors else "no depth edges", fontsize=9)
  for ax, name in zip(axes[0], ("RGB", "ground truth", "prediction", "|error|")):
    ax.set_title(name)
  fig.colorbar(depth_im, ax=axes[:, 1:3], label="depth (m)", shrink=0.9)
  fig.colorbar(err_im, ax=axes[:, 3], label="absolute error (m)", shrink=0.9)
  if title:
    fig.suptitle(title)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def training_curves(metrics_jsonl: str | pathlib.Path, path: str | pathlib.Path) -> None:
  """Loss terms (log scale) and evaluation d1 / abs_rel against the step."""
  records = [json.loads(line) for line in pathlib.Path(metrics_jsonl).read_text().splitlines()
             if line.strip()]
  train = [r for r in records if "loss" in r]
  evals = [r for r in records if "eval/d1" in r]
  fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
  for key in ("loss", "l1", "gradient", "ssim", "perceptual"):
    points = [(r["step"], r[key]) for r in train if key in r]
    if points:
      ax_loss.plot(*zip(*points), label=key)
  ax_loss.set_yscale("log")
  ax_loss.set_xlabel("step")
  ax_loss.set_title("training loss")
  ax_loss.legend()
  if evals:
    steps = [r["step"] for r in evals]
    ax_eval.plot(steps, [r["eval/d1"] for r in evals], "o-", label="d1")
    ax_eval.plot(steps, [r["eval/abs_rel"] for r in evals], "s-", label="abs_rel")
    ax_eval.legend()
  ax_eval.set_xlabel("step")
  ax_eval.set_title("evaluation")
  fig.savefig(path, dpi=80)
  plt.close(fig)


def metrics_table(rows: dict[str, dict[str, float]]) -> str:
  """A plain-text table, one row per named result (e.g. model, baseline)."""
  keys = [k for k in METRIC_ORDER if any(k in r for r in rows.values())]
  name_w = max(len(n) for n in rows)
  lines = [" " * name_w + "".join(f"{k:>10}" for k in keys)]
  for name, r in rows.items():
    lines.append(f"{name:<{name_w}}" + "".join(f"{r.get(k, float('nan')):>10.4f}" for k in keys))
  return "\n".join(lines)
