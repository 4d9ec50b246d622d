"""The accelerator guard: the real train step of a small config compiled,
without the hardware, for an H100 (1 and 8 devices) and a TPU v5e slice by
XLA's own GPU and TPU compilers (the `accelerators` extra), checked for
what must hold there: it compiles; no CPU gradient kernel or host callback is
in the program; every convolution runs on cuDNN (GPU) or the TPU's
convolution emitter; data parallelism splits the batch-dependent memory over
the devices and all-reduces the gradients. Plus scripts/compile_report.py as
a user runs it.

Without the compilers these tests skip; `.ci/run` sets
PERCDEPTH_REQUIRE_ACCELERATOR_COMPILERS=1, so there they fail instead.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from percdepth_jax import compile_report, targets
from percdepth_jax.models import convolution
from percdepth_jax.training import initial_weights
from tests.helpers import REPO, env, needs_onednn, run
from tests.test_journeys import readme_command


def tiny_config():
  """configs/tiny.py, as scripts/compile_report.py --config loads it."""
  spec = importlib.util.spec_from_file_location("tiny", REPO / "configs" / "tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _need_compilers(target):
  missing = targets.missing_compiler(target)
  if missing:
    if os.environ.get("PERCDEPTH_REQUIRE_ACCELERATOR_COMPILERS"):
      pytest.fail(missing)
    pytest.skip(missing)


def _programs(target):
  _need_compilers(target)
  config = tiny_config()
  model_config = initial_weights.run_model_config(config)
  return compile_report.build_programs(config, model_config,
                                       targets.topology_devices(target))


@pytest.fixture(scope="module")
def h100():
  target = targets.resolve("h100")
  return target, _programs(target)


def test_h100_train_step_runs_on_cudnn_without_cpu_pieces(h100):
  """The tiny config's train step for one H100: compiled by XLA's GPU
  compiler, every convolution a cuDNN call of each kind (forward, backward
  input, backward filter), matrix products on cuBLAS, nothing CPU-only."""
  target, programs = h100
  report = compile_report.compile_step(programs, "train", 4, target, "float32")
  assert report.cpu_only == []
  for kind in ("forward", "backward-input", "backward-filter"):
    assert report.kernels.get(f"cuDNN {kind}", 0) > 0, report.kernels
  assert "XLA convolution" not in report.kernels
  assert report.kernels.get("cuBLAS GEMM", 0) > 0
  assert 0 < report.total_bytes < target.memory_bytes and report.fits
  # FLOPs: the CPU lowering's cost analysis; more than the network's forward
  # pass alone (the backward pass costs about twice the forward).
  inference = compile_report.compile_step(programs, "inference", 4, target, "float32")
  assert inference.cpu_only == []
  assert report.flops > 2 * inference.flops / 2  # flip averaging doubles inference


def test_the_guard_catches_cpu_gradient_kernels(h100):
  """The same step traced with the CPU gradient kernels on (what a CPU run
  compiles) is flagged; the accelerator's trace is not."""
  target, programs = h100
  args = programs.train_args(4)

  def lowered_text():  # a new function each time: JAX caches traces per function
    step = jax.jit(lambda *a: programs.train_fn(*a))
    return step.trace(*args).lower().as_text(debug_info=True)

  with convolution.cpu_gradient_kernels(True), convolution.onednn_kernels(False):
    cpu_traced = lowered_text()
  with convolution.cpu_gradient_kernels(False):
    accelerator = lowered_text()
  found = compile_report.cpu_only_pieces("", cpu_traced, "cuda")
  assert len(found) == 1 and "_conv3x3_fwd" in found[0] and "_max_pool_fwd" in found[0]
  assert compile_report.cpu_only_pieces("", accelerator, "cuda") == []
  callback = 'custom_call_target="xla_ffi_python_cpu_callback"'
  assert "host callback" in compile_report.cpu_only_pieces(callback, accelerator, "cuda")[0]
  plain = "%c = f32[1,8,8,4]{3,2,1,0} convolution(%a, %b)"
  assert "not on cuDNN" in compile_report.cpu_only_pieces(plain, accelerator, "cuda")[0]


@needs_onednn
def test_the_guard_catches_onednn_custom_calls(h100):
  """A CPU run's default trace, with the 3x3 convolutions on oneDNN's FFI
  custom calls (registered for the CPU only), is flagged by function and by
  custom-call target."""
  target, programs = h100
  args = programs.train_args(4)
  with convolution.cpu_gradient_kernels(True), convolution.onednn_kernels(True):
    step = jax.jit(lambda *a: programs.train_fn(*a))
    lowered = step.trace(*args).lower().as_text(debug_info=True)
  found = compile_report.cpu_only_pieces("", lowered, "cuda")
  assert len(found) == 2
  assert "_onednn_fwd" in found[0] and "_max_pool_fwd" in found[0]
  assert all(f"percdepth_onednn_conv_{kind}" in found[1]
             for kind in ("forward", "input_grad", "weight_grad"))


@needs_onednn
def test_one_traced_step_compiles_for_an_h100_and_runs_on_the_cpu(h100):
  """The kernels are chosen where a program is lowered: one jitted train
  step (tiny config, default settings, oneDNN on) compiled without the
  hardware for an H100 has no CPU piece and runs every convolution on
  cuDNN; the same function run here on the CPU calls oneDNN and gives the
  losses of the step traced with the CPU kernels off (XLA's own)."""
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from percdepth_jax.benchmark_workers import synthetic_batch
  from percdepth_jax.models import DepthNet
  from percdepth_jax.training import step as step_lib

  target, _ = h100
  config = tiny_config()
  model = DepthNet(initial_weights.run_model_config(config), rngs=nnx.Rngs(0))
  tx = step_lib.make_optimizer(config)
  graphdef, state = step_lib.init_state(model, tx)
  perceptual_graphdef, perceptual_state = nnx.split(
      initial_weights.build_perceptual_net(config))
  batch = jax.tree.map(jnp.asarray, synthetic_batch(4, 64, 64))
  args = (state, perceptual_state, batch)

  def new_step():
    return jax.jit(step_lib.make_train_step(graphdef, perceptual_graphdef, tx, config))

  step = new_step()
  device = jax.sharding.SingleDeviceSharding(targets.topology_devices(target)[0])
  lowered = step.trace(*jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), args)).lower()
  gpu_text = lowered.compile(compile_report.compiler_options(target)).as_text()
  assert compile_report.cpu_only_pieces(
      gpu_text, lowered.as_text(debug_info=True), "cuda") == []
  kernels = compile_report.kernel_counts(gpu_text)
  assert kernels.get("cuDNN backward-filter", 0) > 0 and "XLA convolution" not in kernels

  assert "percdepth_onednn_conv_weight_grad" in step.lower(*args).as_text()
  _, metrics = step(*args)
  with convolution.cpu_gradient_kernels(False):
    _, reference = new_step()(*args)
  for name in ("loss", "grad_norm"):
    np.testing.assert_allclose(metrics[name], reference[name], rtol=1e-4, err_msg=name)


def test_eight_h100s_split_the_batch_and_all_reduce():
  """Data parallel over 8 H100s at global batch 32: each device holds 4
  images, so its batch-dependent memory is about 1/8 of one device holding
  all 32 (the fixed part, weights and optimizer state, replicated); the
  gradients are all-reduced."""
  one = targets.resolve("h100")
  eight = targets.resolve("h100", devices=8)
  single = _programs(one)
  parallel = _programs(eight)
  m4 = compile_report.compile_step(single, "train", 4, one, "float32", with_flops=False)
  m32 = compile_report.compile_step(single, "train", 32, one, "float32", with_flops=False)
  m8x4 = compile_report.compile_step(parallel, "train", 32, eight, "float32",
                                     with_flops=False)
  assert m8x4.cpu_only == [] and m8x4.kernels.get("all-reduce", 0) > 0, m8x4.kernels
  per_image = (m32.total_bytes - m4.total_bytes) / 28
  fixed = m4.total_bytes - 4 * per_image
  share = (m8x4.total_bytes - fixed) / (m32.total_bytes - fixed)
  assert 0.8 / 8 < share < 1.5 / 8, (share, m4.total_bytes, m32.total_bytes, m8x4.total_bytes)


def test_tpu_v5e_slice_compiles_on_its_convolution_emitter():
  """The train step for a TPU v5e 2x2 slice (4 chips, batch 8): compiled by
  libtpu, convolutions kept as XLA convolutions (the TPU emits them on its
  matrix units), gradients all-reduced, nothing CPU-only; the compiler's
  step-time estimate is positive when it gives one."""
  target = targets.resolve("v5e:2x2")
  programs = _programs(target)
  report = compile_report.compile_step(programs, "train", 8, target, "float32")
  assert report.cpu_only == []
  assert report.kernels.get("XLA convolution", 0) > 0, report.kernels
  assert report.kernels.get("all-reduce", 0) > 0, report.kernels
  assert not any(k.startswith("cuDNN") for k in report.kernels)
  assert report.estimated_s is None or report.estimated_s > 0


def test_script_reports_and_finds_the_largest_batch(tmp_path):
  """scripts/compile_report.py on a GPU of a user's own description (an H100
  file with 0.3 GiB of memory): the table, the kernels, and --max-batch's
  bisection agree with the per-batch memory it prints."""
  _need_compilers(targets.resolve("h100"))
  text = (REPO / "percdepth_jax" / "targets" / "h100-80gb.txtpb").read_text()
  small = tmp_path / "small.txtpb"
  small.write_text(text.replace("device_memory_size: 85520809984",
                                f"device_memory_size: {int(0.3 * 2**30)}"))
  out = run(f"python scripts/compile_report.py --config configs/tiny.py --target-config {small} "
            f"--batch 4 --steps train --max-batch --json {tmp_path / 'r.json'}", REPO).stdout
  assert "target: small (1 device(s)" in out and "cuDNN backward-filter" in out
  result = json.loads((tmp_path / "r.json").read_text())
  fits = {r["batch"]: r["fits"] for r in result["reports"]}
  largest = result["max_batch"]
  assert largest >= 4 and all(ok == (batch <= largest) for batch, ok in fits.items()), fits
  assert f"-> {largest} (global" in out


@pytest.mark.parametrize("argv, message", [
    ("--target h200x", "--target h200x: unknown"),
    ("--target h100 --devices 2 --batch 3", "batch 3: the global batch must be"),
    ("--target v5e:2x2 --devices 2", "a TPU slice's size comes from its topology"),
    ("--target h100 --target-config x.txtpb", "one of --target NAME or --target-config"),
    ("--target-config missing.txtpb", "missing.txtpb: cannot read it"),
])
def test_script_bad_input_exits_2(argv, message):
  """Unknown targets, batches that do not split over the devices and
  unreadable descriptions stop with a message and exit code 2."""
  result = run(f"python scripts/compile_report.py --config configs/tiny.py {argv}", REPO,
               expect=2)
  assert message in result.stderr, result.stderr


def test_cpu_runs_stay_on_the_cpu_with_the_compilers_installed():
  """With the CUDA plugin and libtpu installed and JAX_PLATFORMS unset (a
  user's shell), JAX still finds only the CPU: the compilers never become
  the backend of a run on a machine without a GPU or TPU."""
  _need_compilers(targets.resolve("h100"))
  if pathlib.Path("/dev/nvidia0").exists() or pathlib.Path("/dev/accel0").exists():
    pytest.skip("this machine has an accelerator")
  environment = env()
  environment.pop("JAX_PLATFORMS")
  result = subprocess.run([sys.executable, "-c", "import jax; print(jax.devices())"],
                          env=environment, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and result.stdout.strip() == "[CpuDevice(id=0)]", result


def test_missing_compilers_name_the_extra(monkeypatch):
  """Without the CUDA plugin the message names the package and the install
  command of the extra."""
  monkeypatch.setattr(targets, "_importable", lambda module: False)
  message = targets.missing_compiler(targets.resolve("h100"))
  assert "jax-cuda13-plugin" in message and 'pip install -e ".[accelerators]"' in message
  assert "libtpu" in targets.missing_compiler(targets.resolve("v5e:2x2"))


def test_readme_command_on_a_stand_in():
  """README "Check a config against a GPU or TPU": the command as shown, on
  the paper's config made small (toy encoder, 64x64 frames)."""
  _need_compilers(targets.resolve("h100"))
  command = readme_command(
      "percdepth compile-report --config nyu_paper --target h100 --batch 8,32")
  small = (" --config.model.encoder=densenet_tiny --config.data.height=64"
           " --config.data.width=64")
  out = run(command + small, REPO).stdout
  rows = [r for r in (line.split() for line in out.splitlines())
          if r and r[0] in ("train", "inference") and r[1].isdigit()]
  assert [(r[0], r[1], r[8]) for r in rows] == [
      ("train", "8", "yes"), ("inference", "8", "yes"),
      ("train", "32", "yes"), ("inference", "32", "yes")], out
  assert "perceptual loss on" in out and "cuDNN forward" in out
