"""scripts/benchmark.py: each workload in a worker process of its own.

Not a timing test of the model: one tiny step of each workload in both
frameworks checks that the JSON record holds what docs/benchmarks.md
reports (times, images/s, ratio, FLOPs, memory) and that each worker holds
only its own framework (modules imported, shared libraries mapped); a
worker that sleeps a known time per step checks the timing and the ratios.
"""

import json
import subprocess
import sys

import pytest

from percdepth_jax.commands import benchmark
from tests.helpers import REPO


def _entries(result):
  return [(mode, name, r) for mode, entry in result["modes"].items()
          for name, r in entry.items() if isinstance(r, dict)]


def test_benchmark_json_fields_and_isolation(tmp_path):
  """Both modes, PyTorch and a variant with the oneDNN kernels off: every
  worker's record, and what each worker process had imported and loaded."""
  from percdepth_jax.models import onednn

  out = tmp_path / "bench.json"
  code = benchmark.main(["--encoder", "densenet_tiny", "--height", "64", "--width", "64",
                         "--batch", "1", "--steps", "1", "--rounds", "2", "--warmup", "0",
                         "--compare-pytorch", "--variant", "onednn_off:PERCDEPTH_ONEDNN=0",
                         "--json", str(out)])
  assert code == 0
  result = json.loads(out.read_text())
  assert (result["height"], result["width"], result["batch"]) == (64, 64, 1)
  assert result["dtype"] == "float32" and result["encoder"] == "densenet_tiny"
  assert result["separate_processes"] is True
  assert {"jax", "torch", "torchvision"} <= set(result["versions"])
  assert result["peak_flops_per_s"] > 0
  assert set(result["modes"]) == {"train", "inference"}
  pids = set()
  for mode, entry in result["modes"].items():
    assert {k for k, v in entry.items() if isinstance(v, dict)} == {
        "jax", "pytorch", "jax[onednn_off]"}
    jax_r, torch_r = entry["jax"], entry["pytorch"]
    for r in (jax_r, torch_r, entry["jax[onednn_off]"]):
      assert len(r["ms_per_step_rounds"]) == 2
      assert r["ms_per_step_min"] <= r["ms_per_step_median"] <= r["ms_per_step_max"]
      assert r["images_per_s"] == pytest.approx(1000.0 / r["ms_per_step_median"])
      assert r["compile_s"] > 0
      assert r["process"]["peak_rss_bytes"] > 0
      assert r["other_cpu_cores"] >= 0
      # Both frameworks are credited with the same XLA FLOP count.
      assert r["flops_per_step"] == jax_r["flops_per_step"] > 0
      assert r["achieved_flops_per_s"] == pytest.approx(
          r["flops_per_step"] / (r["ms_per_step_median"] / 1000.0))
      pids.add(r["process"]["pid"])
    assert jax_r["peak_memory_bytes"] > 0
    for name in ("jax", "jax[onednn_off]"):
      assert entry[f"{name}_over_pytorch"] == pytest.approx(
          torch_r["ms_per_step_median"] / entry[name]["ms_per_step_median"])
    # Isolation: no worker holds the other framework.
    for name in ("jax", "jax[onednn_off]"):
      assert "jax" in entry[name]["process"]["modules"]
      assert "torch" not in entry[name]["process"]["modules"]
    assert "torch" in torch_r["process"]["modules"]
    assert not {"jax", "jaxlib", "flax"} & set(torch_r["process"]["modules"])
    assert not any("dnnl" in lib or "onednn" in lib for lib in torch_r["process"]["libraries"])
    assert entry["jax[onednn_off]"]["environment"] == {"PERCDEPTH_ONEDNN": "0"}
    assert not any("dnnl" in lib for lib in entry["jax[onednn_off]"]["process"]["libraries"])
  # The default JAX training step runs the oneDNN kernels where they build,
  # and the probe sees their library (so it would see it in PyTorch's too).
  if onednn.available():
    assert any("libdnnl" in lib for lib in result["modes"]["train"]["jax"]["process"]["libraries"])
  assert len(pids) == 6  # one process per workload
  # A training step does more work than a forward pass with flip (3x fwd vs 2x).
  assert (result["modes"]["train"]["jax"]["flops_per_step"]
          > result["modes"]["inference"]["jax"]["flops_per_step"])


def test_a_slowed_worker_shows_in_the_ratio(tmp_path, monkeypatch):
  """Workers that sleep 30 ms per step (both frameworks' places) and a
  variant slowed to 90 ms by its environment: the printed ratios are the
  sleep times' (1.0x and 1/3x), whatever the workers print on stdout; a
  process spinning meanwhile shows as CPU used beside the timed worker."""
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(benchmark, "WORKER_MODULES",
                      {"jax": "tests.sleepy_worker", "pytorch": "tests.sleepy_worker"})
  monkeypatch.setenv("SLEEPY_MS", "30")
  out = tmp_path / "bench.json"
  # A process spinning beside the (sleeping) workers: the record says so.
  spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
  try:
    assert benchmark.main(["--encoder", "densenet_tiny", "--height", "64", "--width", "64",
                           "--mode", "inference", "--steps", "3", "--rounds", "3",
                           "--warmup", "1", "--compare-pytorch",
                           "--variant", "slowed:SLEEPY_MS=90", "--json", str(out)]) == 0
  finally:
    spinner.kill()
    spinner.wait()
  entry = json.loads(out.read_text())["modes"]["inference"]
  assert entry["jax[slowed]"]["other_cpu_cores"] > 0.5
  assert entry["jax"]["ms_per_step_median"] == pytest.approx(30, rel=0.3)
  assert entry["jax[slowed]"]["ms_per_step_median"] == pytest.approx(90, rel=0.3)
  assert entry["jax_over_pytorch"] == pytest.approx(1.0, rel=0.3)
  assert entry["jax[slowed]_over_pytorch"] == pytest.approx(1 / 3, rel=0.3)


@pytest.mark.parametrize("argv, message", [
    (["--height", "100"], "multiples of 32"),
    (["--mode", "training"], "--mode"),
    (["--batch", "0"], "--batch"),
    (["--encoder", "resnet50"], "--encoder"),
    (["--variant", "onednn_off"], "--variant"),
    (["--variant", "pytorch/passive:OMP_WAIT_POLICY=PASSIVE"], "--compare-pytorch"),
])
def test_benchmark_bad_arguments(argv, message, capsys):
  assert benchmark.main(argv) == 2
  assert message in capsys.readouterr().err


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
