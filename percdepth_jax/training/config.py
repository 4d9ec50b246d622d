"""Defaults shared by every experiment config (configs/*.py start from these),
and the check of command-line overrides against them."""

from __future__ import annotations

import difflib
import importlib.util
import pathlib
from typing import Sequence

import ml_collections

from percdepth_jax.models import ModelConfig


def base_config() -> ml_collections.ConfigDict:
  """Every field a training run reads, with the paper's values where it has one."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_steps = 80_000
  c.batch_size = 8  # global, over all devices and hosts
  c.log_every = 50
  c.eval_every = 5_000
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3

  # The depth model (models/config.py); model.remat=True recomputes dense
  # layers in the backward pass to fit larger batches.
  c.model = ml_collections.ConfigDict(ModelConfig().to_dict())

  # Initial weights (training/initial_weights.py). model: a whole depth model
  # to fine-tune (a converted model directory or a training workdir, DIR or
  # DIR:best): its architecture, weights and BatchNorm statistics, with a
  # fresh optimizer from step 0. Otherwise the encoder from a converted
  # torchvision DenseNet (directory from `python -m weights_conversion
  # torchvision`), or from_scratch=True for random init.
  c.init = ml_collections.ConfigDict()
  c.init.model = ""
  c.init.encoder_weights = "weights/densenet121"
  c.init.from_scratch = False

  # Frozen perceptual network: ResNet-50 truncated after layer1.
  c.perceptual = ml_collections.ConfigDict()
  c.perceptual.weights = "weights/resnet50"  # a converted ResNet-50 directory (full or cut)
  c.perceptual.from_scratch = False  # True: random-init frozen features

  c.loss = ml_collections.ConfigDict()
  c.loss.l1 = 0.1
  c.loss.gradient = 1.0
  c.loss.ssim = 1.0
  c.loss.perceptual = 0.5

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 3e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  # Learning-rate schedule (training/step.py): "constant" (the paper's),
  # "cosine" or "linear" decay to learning_rate * final_lr_fraction at
  # num_steps, after warmup_steps of linear warmup from 0.
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.final_lr_fraction = 0.0
  # > 0: also keep an exponential moving average of the weights (state
  # "ema_params"), for evaluation; 0 = off.
  c.optimizer.ema_decay = 0.0

  c.data = ml_collections.ConfigDict()
  c.data.train = "tfds:nyu_depth_v2:train"
  c.data.eval = "tfds:nyu_depth_v2:validation"
  c.data.height = 480  # synthetic scenes are rendered at this size
  c.data.width = 640
  c.data.hflip = 0.5
  c.data.channel_swap = 0.25
  c.data.num_threads = 4
  c.data.eval_batch_size = 8
  # "H,W": centre-crop every frame (train and eval) to this size, for data
  # whose frames are not multiples of 32. "" = use frames as they are.
  c.data.crop = ""
  # True: skip unreadable or invalid examples (each named in the log, counted
  # in report.json) instead of stopping at the first one.
  c.data.skip_bad = False

  c.eval = ml_collections.ConfigDict()
  c.eval.protocol = "densedepth"
  c.eval.flip = True
  c.eval.max_examples = 0  # 0 = the whole eval set
  c.eval.num_samples = 4  # rows of the sample grid
  # Depth-boundary errors (iBims-1 dbe_acc, dbe_com) in the final evaluation.
  c.eval.edges = True
  c.eval.baseline = False  # also report a constant (train mean) depth baseline
  # Held-out sets for the final report (comma-separated data specs, e.g.
  # synthetic rooms of seeds the settings were not tuned on): the model and,
  # with eval.baseline, the constant baseline on each, under each protocol of
  # eval.heldout_protocols, with the mean and spread over the sets.
  c.eval.heldout = ""
  c.eval.heldout_protocols = "eigen,full_frame"

  # Many hosts: set these, or leave them empty where the cluster environment
  # (SLURM, TPU, Open MPI...) lets jax.distributed.initialize() find them.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.enabled = False
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  return c


def field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf of a config as a dotted name ("optimizer.learning_rate")."""
  names = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      names += field_names(value, f"{prefix}{key}.")
    else:
      names.append(prefix + key)
  return names


def _load_config_file(path: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("_percdepth_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _nearest(name: str, names: Sequence[str]) -> str | None:
  """The valid name closest to a mistyped one: among the fields of the same
  section by spelling or initials (lr -> learning_rate), else overall."""
  parent, _, leaf = name.rpartition(".")
  siblings = [n for n in names if n.rpartition(".")[0] == parent]
  def score(candidate: str) -> float:
    candidate_leaf = candidate.rpartition(".")[2]
    initials = "".join(word[0] for word in candidate_leaf.split("_") if word)
    return 1.0 if initials == leaf else difflib.SequenceMatcher(
        None, leaf, candidate_leaf).ratio()
  best = max(siblings, key=score, default=None)
  if best is not None and score(best) >= 0.5:
    return best
  close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
  return close[0] if close else None


def unknown_override_message(argv: Sequence[str]) -> str | None:
  """A one-line message for the first `--config.NAME=...` of `argv` that names
  no field of the `--config` file, with the nearest valid name; None when
  every override names a field (or the config file cannot be found)."""
  config_path, overrides = None, []
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      config_path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      config_path = argv[i + 1]
    elif arg.startswith("--config."):
      overrides.append(arg[len("--config."):].split("=", 1)[0])
  if not config_path or not pathlib.Path(config_path).is_file():
    return None
  names = field_names(_load_config_file(config_path))
  for name in overrides:
    if name not in names:
      nearest = _nearest(name, names)
      hint = f" Did you mean --config.{nearest}?" if nearest else ""
      return (f"--config.{name}: {config_path} has no field {name!r}.{hint} "
              "(The fields and their defaults: percdepth_jax/training/config.py.)")
  return None
