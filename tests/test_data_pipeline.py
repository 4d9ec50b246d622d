"""Grain pipeline: epochs, determinism, exact resume, host sharding, eval
padding, and global jax.Array batches sharded over devices."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from percdepth_jax.data import pipeline
from percdepth_jax.errors import UserInputError
from tests.helpers import REPO

H, W = 4, 6


class IdSource:
  """Example i: image filled with i, depth i + 1, one invalid pixel.

  Returns None (a skipped bad example) for indices in `bad`.
  """

  def __init__(self, n, bad=()):
    self.n, self.bad = n, set(bad)

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if i in self.bad:
      return None
    valid = np.ones((H, W), bool)
    valid[0, 0] = False
    return {"image": np.full((H, W, 3), i, np.uint8),
            "depth": np.where(valid, np.float32(i + 1), 0).astype(np.float32),
            "valid": valid, "name": f"ex{i}"}


def _ids(batch):
  """Example ids of a batch, read back from the images (and checked against depth)."""
  image = np.asarray(batch["image"])
  ids = image[:, 0, 1, 0].astype(int)
  np.testing.assert_array_equal(np.asarray(batch["depth"])[:, 1, 1], ids + 1)
  return ids.tolist()


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_epochs_cover_dataset_and_reshuffle():
  """No augmentation, batch 4 over 12 examples: each epoch (3 batches) is a
  permutation of 0..11, and epoch 2's order differs from epoch 1's."""
  it = pipeline.make_train_iterator(IdSource(12), 4, seed=1, augment=None, to_jax=False)
  epoch1 = sum((_ids(b) for b in _take(it, 3)), [])
  epoch2 = sum((_ids(b) for b in _take(it, 3)), [])
  assert sorted(epoch1) == list(range(12)) == sorted(epoch2)
  assert epoch1 != list(range(12)) and epoch1 != epoch2
  b = next(it)
  assert set(b) == {"image", "depth", "valid"}
  assert b["image"].shape == (4, H, W, 3) and b["image"].dtype == np.uint8
  assert b["depth"].dtype == np.float32 and b["valid"].dtype == bool
  assert not b["valid"][:, 0, 0].any() and b["valid"][:, 1:].all()


def test_same_seed_same_batches_other_seed_differs():
  a = pipeline.make_train_iterator(IdSource(16), 4, seed=3, to_jax=False)
  b = pipeline.make_train_iterator(IdSource(16), 4, seed=3, to_jax=False)
  c = pipeline.make_train_iterator(IdSource(16), 4, seed=4, to_jax=False)
  ba, bb, bc = _take(a, 5), _take(b, 5), _take(c, 5)
  for x, y in zip(ba, bb):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert [_ids(x) for x in ba] != [_ids(x) for x in bc]


def test_resume_gives_exactly_the_next_batches():
  """State saved after 5 batches (of a device-prefetching jax iterator),
  JSON round-tripped, restored in a fresh iterator: the next 4 batches are
  byte-identical to the uninterrupted run, augmentation included."""
  from percdepth_jax.data.synthetic import SyntheticSource
  source = SyntheticSource(10, seed=2, height=16, width=24)
  run = pipeline.make_train_iterator(source, 2, seed=9, device_prefetch=2)
  _take(run, 5)
  state = json.loads(json.dumps(run.get_state()))
  expected = _take(run, 4)
  resumed = pipeline.make_train_iterator(source, 2, seed=9, device_prefetch=2)
  next(resumed)  # a used iterator, to show set_state really rewinds
  resumed.set_state(state)
  for want, got in zip(expected, _take(resumed, 4)):
    for k in want:
      np.testing.assert_array_equal(np.asarray(want[k]), np.asarray(got[k]))


def test_augmentation_is_applied_per_example():
  """With the paper's augmentation, some images are flipped (ids read from
  the untouched, symmetric-free depth code differ in column order)."""
  class Ramp(IdSource):
    def __getitem__(self, i):
      ex = super().__getitem__(i)
      ex["depth"] = np.tile(np.arange(1, W + 1, dtype=np.float32), (H, 1))
      ex["valid"] = np.ones((H, W), bool)
      return ex
  it = pipeline.make_train_iterator(Ramp(8), 8, seed=0, to_jax=False)
  depth = np.concatenate([b["depth"] for b in _take(it, 8)])
  flipped = depth[:, 0, 0] == W
  assert np.all((depth[:, 0, 0] == 1) | flipped)
  assert 0.3 < flipped.mean() < 0.7  # p = 0.5 over 64 examples


def test_two_hosts_partition_the_data():
  """process_count 2: each host gets half of the global batch, and in one
  epoch the hosts' examples are disjoint and together cover the dataset."""
  seen = []
  for pi in range(2):
    it = pipeline.make_train_iterator(IdSource(12), 4, seed=5, augment=None, to_jax=False,
                                      process_index=pi, process_count=2)
    batches = _take(it, 3)
    assert all(b["image"].shape[0] == 2 for b in batches)
    seen.append(sum((_ids(b) for b in batches), []))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(12))
  with pytest.raises(UserInputError, match="multiple of the number of hosts"):
    pipeline.make_train_iterator(IdSource(12), 3, seed=0, to_jax=False,
                                 process_index=0, process_count=2)


def test_global_batches_do_not_depend_on_the_host_count():
  """The two hosts' local batches, concatenated, equal the batch one host
  sees (same examples and the same augmentation), for several steps."""
  kwargs = dict(seed=3, augment=pipeline.AugmentConfig(flip_prob=0.5,
                                                       channel_permute_prob=0.5),
                to_jax=False)
  single = _take(pipeline.make_train_iterator(IdSource(10), 4, **kwargs), 5)
  hosts = [_take(pipeline.make_train_iterator(IdSource(10), 4, process_index=pi,
                                              process_count=2, **kwargs), 5)
           for pi in range(2)]
  for step, batch in enumerate(single):
    for key in ("image", "depth", "valid"):
      joined = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
      np.testing.assert_array_equal(joined, batch[key], err_msg=f"{key} @ {step}")


def test_skipped_examples_are_dropped():
  """A skip_bad source returns None for bad examples: they never appear."""
  it = pipeline.make_train_iterator(IdSource(10, bad={3, 7}), 4, seed=0, augment=None,
                                    to_jax=False)
  ids = sum((_ids(b) for b in _take(it, 4)), [])
  assert 3 not in ids and 7 not in ids and set(ids) <= set(range(10))


def test_eval_every_example_once_in_order_with_padding_mask():
  """10 examples, global batch 4: 3 batches, the last with 2 real entries;
  real entries are examples 0..9 in order, padding is zeros."""
  batches = list(pipeline.make_eval_iterator(IdSource(10), 4))
  assert len(batches) == 3 == pipeline.num_eval_batches(IdSource(10), 4)
  mask = np.concatenate([np.asarray(b["mask"]) for b in batches])
  np.testing.assert_array_equal(mask, [True] * 10 + [False] * 2)
  image = np.concatenate([np.asarray(b["image"]) for b in batches])
  np.testing.assert_array_equal(image[:10, 0, 1, 0], np.arange(10))
  assert not image[10:].any() and not np.asarray(batches[-1]["valid"])[2:].any()


def test_eval_two_hosts_reassemble_global_order():
  """Host 0 holds the first half of each global batch, host 1 the second."""
  per_host = [list(pipeline.make_eval_iterator(IdSource(10), 4, to_jax=False,
                                                process_index=pi, process_count=2))
              for pi in range(2)]
  ids, mask = [], []
  for b0, b1 in zip(*per_host):
    ids += np.concatenate([b0["image"], b1["image"]])[:, 0, 1, 0].tolist()
    mask += np.concatenate([b0["mask"], b1["mask"]]).tolist()
  assert [i for i, m in zip(ids, mask) if m] == list(range(10))
  assert mask == [True] * 10 + [False] * 2


def test_mixed_sizes_give_a_clear_error():
  class Mixed(IdSource):
    def __getitem__(self, i):
      ex = super().__getitem__(i)
      if i == 1:
        ex = {k: (v[:, :-1] if k != "name" else v) for k, v in ex.items()}
      return ex
  it = pipeline.make_eval_iterator(Mixed(4), 4, to_jax=False)
  with pytest.raises(UserInputError, match="different sizes"):
    next(it)


def test_global_batches_are_sharded_over_devices():
  """In a fresh process with 4 CPU devices: batch arrays are global
  jax.Arrays split 4 ways along the batch axis, with the same values as the
  host NumPy batches."""
  code = textwrap.dedent("""
      import numpy as np, jax
      from tests.test_data_pipeline import IdSource
      from percdepth_jax.data import pipeline
      assert jax.device_count() == 4
      sharding = pipeline.batch_sharding()
      it = pipeline.make_train_iterator(IdSource(16), 8, seed=0, sharding=sharding)
      ref = pipeline.make_train_iterator(IdSource(16), 8, seed=0, to_jax=False)
      for _ in range(3):
        b, r = next(it), next(ref)
        for k in ("image", "depth", "valid"):
          a = b[k]
          assert isinstance(a, jax.Array) and a.shape == r[k].shape, k
          assert len(a.addressable_shards) == 4
          assert {s.data.shape[0] for s in a.addressable_shards} == {2}
          np.testing.assert_array_equal(np.asarray(a), r[k])
      ev = list(pipeline.make_eval_iterator(IdSource(10), 8))
      assert [len(e["mask"].addressable_shards) for e in ev] == [4, 4]
      print("OK")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_worker_processes_resume_exactly():
  """worker_count=1 (a Grain worker process decoding the real frames): a state
  taken after 2 batches resumes to the same next 2 batches."""
  from percdepth_jax.data.folder import FolderSource
  from tests.helpers import REAL_RGBD
  source = FolderSource(REAL_RGBD / "redwood" / "manifest.csv")
  run = pipeline.make_train_iterator(source, 2, seed=0, worker_count=1, to_jax=False)
  _take(run, 2)
  state = json.loads(json.dumps(run.get_state()))
  expected = _take(run, 2)
  resumed = pipeline.make_train_iterator(source, 2, seed=0, worker_count=1, to_jax=False)
  resumed.set_state(state)
  for want, got in zip(expected, _take(resumed, 2)):
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])
