"""Training checkpoints in process: save and restore the whole train state
(with and without a moving average of the weights), the best-by-d1 item, and
what load_model reads from a workdir."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from percdepth_jax.model_io import load_model_with_step
from percdepth_jax.models import DepthNet, ModelConfig
from percdepth_jax.training import step as step_lib
from percdepth_jax.storage import Checkpoints


def _state(seed: int, ema_decay: float):
  model = DepthNet(ModelConfig(encoder="densenet_tiny"), rngs=nnx.Rngs(seed))
  return step_lib.init_state(model, optax.adam(1e-3), ema_decay=ema_decay)


def _perturbed(state, seed: int):
  """The state with every float array moved by noise (so that params, their
  average and the optimizer moments all differ from a fresh state)."""
  rng = np.random.default_rng(seed)
  def move(x):
    x = np.asarray(x)
    return x + rng.normal(size=x.shape).astype(x.dtype) if x.dtype.kind == "f" else x + 3
  return jax.tree.map(move, state)


def _flat(tree) -> dict:
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("ema_decay", [0.0, 0.99])
def test_save_restore_round_trip(tmp_path, ema_decay):
  """restore_latest gives back exactly what save wrote: parameters, their
  moving average (when kept), BatchNorm statistics, optimizer state, step,
  the data-iterator state and the meta."""
  graphdef, fresh = _state(0, ema_decay)
  saved = _perturbed(fresh, seed=1)
  checkpoints = Checkpoints(tmp_path, keep=2, use_async=False)
  checkpoints.save(7, saved, {"iterator": 12}, {"step": 7, "eval_pending": True})
  checkpoints.wait()
  _, template = _state(5, ema_decay)  # other random values, same structure
  restored, data_state, meta = checkpoints.restore_latest(template)
  checkpoints.close()
  assert data_state == {"iterator": 12} and meta["eval_pending"] is True
  assert restored.keys() == saved.keys()
  a, b = _flat(saved), _flat(restored)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_model_item_holds_the_averaged_weights(tmp_path):
  """With a moving average kept, the checkpoint's model (what load_model and
  evaluation read) is the average, not the raw parameters; the best/
  checkpoint keeps one step and skips a step it already has."""
  graphdef, fresh = _state(0, 0.99)
  saved = _perturbed(fresh, seed=2)
  checkpoints = Checkpoints(tmp_path, keep=2, use_async=False)
  checkpoints.save(3, saved, {}, {"step": 3})
  checkpoints.save_best(3, saved, {"d1": 0.5}, {"step": 3})
  checkpoints.save_best(3, saved, {"d1": 0.5}, {"step": 3})  # a resumed run's re-evaluation
  checkpoints.wait()
  checkpoints.close()
  (tmp_path / "model.json").write_text(
      '{"format": "percdepth_jax.model", "version": 1, "kind": "depth_net", '
      '"config": {"encoder": "densenet_tiny"}, "source": {}}')
  for spec in (tmp_path, f"{tmp_path}:best"):
    model, step = load_model_with_step(spec)
    assert step == 3
    loaded = _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    expected = _flat(nnx.to_pure_dict(saved["ema_params"]))
    raw = _flat(nnx.to_pure_dict(saved["params"]))
    for key in expected:
      np.testing.assert_array_equal(loaded[key], expected[key], err_msg=key)
    assert any(not np.array_equal(loaded[k], raw[k]) for k in raw)
