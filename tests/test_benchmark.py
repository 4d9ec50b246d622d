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


def test_flop_count_includes_the_work_of_the_cpu_kernels():
  """The FLOPs credited to a training step count the arithmetic, whichever
  kernels run it: for the gradient of sum(conv3x3(x, k)) (padding 1) the
  input and weight gradients each take 2*B*C*D*(3H-2)*(3W-2) FLOPs, the
  multiply-adds that do not fall on padding (the forward pass is not needed).
  XLA's analysis of the compiled program cannot see inside the oneDNN
  custom calls that the CPU runs by default."""
  import jax
  import jax.numpy as jnp

  from percdepth_jax import benchmarking
  from percdepth_jax.models import convolution

  b, h, w, c, d = 2, 16, 20, 8, 4
  x, kernel = jnp.ones((b, h, w, c)), jnp.ones((3, 3, c, d))

  def grads(x, kernel):
    return jax.grad(lambda x, k: convolution.conv2d(x, k, 1, 1).sum(), argnums=(0, 1))(x, kernel)

  assert benchmarking._plain_flops(grads, x, kernel) == 2 * (2 * b * c * d * (3 * h - 2) * (3 * w - 2))
