"""The final report's held-out figures: the model and a constant baseline on
several held-out sets the run's settings were never tuned on (for the
synthetic rooms, other seeds of the generator), under several protocols,
with the mean and spread over the sets (`config.eval.heldout`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from percdepth_jax import evaluation
from percdepth_jax import metrics as metrics_lib

BASELINE = "constant (train mean)"


def mean_train_depth(train_source, max_examples: int = 256) -> float:
  """Mean valid depth (metres) over the first `max_examples` training examples."""
  total, count = 0.0, 0
  for i in range(min(len(train_source), max_examples)):
    ex = train_source[i]
    if ex is None:  # skipped as bad
      continue
    total += float(ex["depth"][ex["valid"]].sum())
    count += int(ex["valid"].sum())
  return total / max(count, 1)


def constant_metrics(source, depth: float, protocols: Sequence[str],
                     max_examples: int = 0) -> dict[str, dict[str, float]]:
  """Metrics of predicting `depth` everywhere, per protocol (full frames)."""
  accumulators = {p: metrics_lib.DepthMetricsAccumulator(p) for p in protocols}
  n = len(source) if not max_examples else min(len(source), max_examples)
  for i in range(n):
    ex = source[i]
    if ex is None:
      continue
    for accumulator in accumulators.values():
      accumulator.update(ex["depth"][None], np.full_like(ex["depth"][None], depth),
                         mask=ex["valid"][None])
  return {p: a.result() for p, a in accumulators.items()}


def spread(values_by_set: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
  """Mean and (population) standard deviation over the sets, per metric."""
  names = [k for k in values_by_set[0] if k in metrics_lib.METRIC_NAMES]
  return {k: {"mean": float(np.mean([v[k] for v in values_by_set])),
              "std": float(np.std([v[k] for v in values_by_set]))} for k in names}


def evaluate_heldout(model, sources: dict[str, Any], protocols: Sequence[str], *,
                     baseline_depth: float | None, flip: bool, batch_size: int,
                     sharding=None, num_samples: int = 0
                     ) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
  """Returns ({"sets": {spec: {"model": {protocol: metrics}, BASELINE: ...}},
  "summary": {row: {protocol: {metric: {"mean", "std"}}}}, "protocols"},
  the first `num_samples` full-frame examples of the first set with their
  predictions, for the sample grid)."""
  sets: dict[str, Any] = {}
  samples: list[dict[str, np.ndarray]] = []
  for name, source in sources.items():
    result, set_samples = evaluation.evaluate_protocols(
        model, source, protocols, flip=flip, batch_size=batch_size, sharding=sharding,
        num_samples=0 if samples else num_samples)
    samples = samples or set_samples
    sets[name] = {"model": result["protocols"]}
    if baseline_depth is not None:
      sets[name][BASELINE] = constant_metrics(source, baseline_depth, protocols)
  rows = list(next(iter(sets.values())))
  summary = {row: {p: spread([sets[s][row][p] for s in sets]) for p in protocols}
             for row in rows}
  return {"protocols": list(protocols), "sets": sets, "summary": summary}, samples


def summary_table(heldout: dict[str, Any], names: Sequence[str] = ("d1", "abs_rel", "rmse")
                  ) -> str:
  """Rows (model, baseline) x columns (protocol metric), as mean +- std."""
  protocols = heldout["protocols"]
  columns = [(p, k) for p in protocols for k in names]
  headers = [f"{p} {k}" for p, k in columns]
  rows = heldout["summary"]
  width = max(len(r) for r in rows) + 2
  cells = {r: [f"{rows[r][p][k]['mean']:.3f} +- {rows[r][p][k]['std']:.3f}"
               for p, k in columns] for r in rows}
  col = max(max(len(h) for h in headers), max(len(c) for v in cells.values() for c in v)) + 2
  lines = [f"held-out sets: {', '.join(heldout['sets'])} (mean +- std over the "
           f"{len(heldout['sets'])} sets)",
           " " * width + "".join(h.rjust(col) for h in headers)]
  lines += [r.ljust(width) + "".join(c.rjust(col) for c in cells[r]) for r in rows]
  return "\n".join(lines)
