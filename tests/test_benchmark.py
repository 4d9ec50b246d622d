"""scripts/benchmark.py: one tiny step of each workload in both frameworks.

Not a timing test: it checks that the script runs the JAX and PyTorch train
steps and inference and that its JSON record holds what docs/benchmarks.md
reports (times, images/s, ratio, FLOPs, memory), with values consistent with
one another.
"""

import json

import pytest

from scripts import benchmark


def test_benchmark_json_fields(tmp_path):
  out = tmp_path / "bench.json"
  code = benchmark.main(["--encoder", "densenet_tiny", "--height", "64", "--width", "64",
                         "--batch", "1", "--steps", "1", "--rounds", "2", "--warmup", "0",
                         "--compare-pytorch", "--json", str(out)])
  assert code == 0
  result = json.loads(out.read_text())
  assert (result["height"], result["width"], result["batch"]) == (64, 64, 1)
  assert result["dtype"] == "float32" and result["encoder"] == "densenet_tiny"
  assert {"jax", "torch", "torchvision"} <= set(result["versions"])
  assert result["peak_flops_per_s"] > 0
  assert set(result["modes"]) == {"train", "inference"}
  for mode, entry in result["modes"].items():
    jax_r, torch_r = entry["jax"], entry["pytorch"]
    for r in (jax_r, torch_r):
      assert len(r["ms_per_step_rounds"]) == 2
      assert r["ms_per_step_min"] <= r["ms_per_step_median"] <= r["ms_per_step_max"]
      assert r["images_per_s"] == pytest.approx(1000.0 / r["ms_per_step_median"])
      assert r["compile_s"] > 0
      # Both frameworks are credited with the same XLA FLOP count.
      assert r["flops_per_step"] == jax_r["flops_per_step"] > 0
      assert r["achieved_flops_per_s"] == pytest.approx(
          r["flops_per_step"] / (r["ms_per_step_median"] / 1000.0))
    assert jax_r["peak_memory_bytes"] > 0
    assert entry["jax_over_pytorch"] == pytest.approx(
        torch_r["ms_per_step_median"] / jax_r["ms_per_step_median"])
  # A training step does more work than a forward pass with flip (3x fwd vs 2x).
  assert (result["modes"]["train"]["jax"]["flops_per_step"]
          > result["modes"]["inference"]["jax"]["flops_per_step"])


@pytest.mark.parametrize("argv, message", [
    (["--height", "100"], "multiples of 32"),
    (["--mode", "training"], "--mode"),
    (["--batch", "0"], "--batch"),
    (["--encoder", "resnet50"], "--encoder"),
])
def test_benchmark_bad_arguments(argv, message, capsys):
  assert benchmark.main(argv) == 2
  assert message in capsys.readouterr().err


def test_benchmark_separate_processes(tmp_path):
  """--separate-processes (the GPU comparison's mode): each framework is timed
  in a process of its own and the parent merges their records, crediting
  PyTorch with JAX's FLOP count and computing the speed ratio."""
  out = tmp_path / "bench.json"
  code = benchmark.main(["--encoder", "densenet_tiny", "--height", "64", "--width", "64",
                         "--batch", "1", "--steps", "1", "--rounds", "1", "--warmup", "0",
                         "--mode", "inference", "--compare-pytorch", "--separate-processes",
                         "--json", str(out)])
  assert code == 0
  result = json.loads(out.read_text())
  assert result["separate_processes"] is True
  entry = result["modes"]["inference"]
  assert set(entry) == {"jax", "pytorch", "jax_over_pytorch"}
  assert entry["pytorch"]["flops_per_step"] == entry["jax"]["flops_per_step"] > 0
  assert entry["jax_over_pytorch"] == pytest.approx(
      entry["pytorch"]["ms_per_step_median"] / entry["jax"]["ms_per_step_median"])
