"""Grain input pipeline: per-host shards -> global, sharded jax.Array batches.

Train: shard by host, shuffle (re-shuffled every epoch), repeat, augment with
a generator derived from (seed, position in the stream), batch, decode in
threads (and optionally worker processes). The iterator's state is Grain's
(a small dict of ints), saved after every batch *handed out*, so restoring it
continues with exactly the next batch, device prefetch notwithstanding.

Eval: every example once, in order, no augmentation; the last batch is padded
and `mask_B` says which entries are real.

Batches are dicts: image_BxHxWx3 uint8, depth_BxHxW float32 metres (0 where
invalid), valid_BxHxW bool (+ mask_B bool for eval), each a global jax.Array
built with jax.make_array_from_process_local_data.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import math
from typing import Any, Iterator, Sequence

import grain
import jax
import numpy as np

from percdepth_jax.data.augment import AugmentConfig, augment as apply_augment
from percdepth_jax.errors import UserInputError

KEYS = ("image", "depth", "valid")


def host_shard(process_index: int | None = None,
               process_count: int | None = None) -> tuple[int, int]:
  """(index, count) of this host; defaults to jax.process_index()/count()."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  return index, count


def batch_sharding(mesh: jax.sharding.Mesh | None = None,
                   axis: str | Sequence[str] = "data",
                   devices: Sequence[jax.Device] | None = None) -> jax.sharding.NamedSharding:
  """Batch axis split over `axis` of `mesh` (default: a 1-D mesh of
  `devices`, all devices when None)."""
  if mesh is None:
    devices = jax.devices() if devices is None else devices
    mesh = jax.make_mesh((len(devices),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    axis = "data"
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


def stack_examples(examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Stacks examples into a host batch, with a clear error on mixed sizes."""
  shapes = {ex["depth"].shape for ex in examples}
  if len(shapes) > 1:
    names = [ex.get("name", "?") for ex in examples]
    raise UserInputError(
        f"examples of different sizes {sorted(shapes)} in one batch ({names[:4]}"
        "...): batching needs one size. Resize the dataset, or set an "
        "augmentation crop size (AugmentConfig(size=(H, W))).")
  keys = [k for k in examples[0] if k in KEYS or k == "mask"]
  return {k: np.stack([ex[k] for ex in examples]) for k in keys}


def _select(example: dict[str, Any]) -> dict[str, np.ndarray]:
  return {"image": np.asarray(example["image"], np.uint8),
          "depth": np.asarray(example["depth"], np.float32),
          "valid": np.asarray(example["valid"], bool),
          **({"name": example["name"]} if "name" in example else {})}


class _HostSlots:
  """Positions in the global example stream that host `pi` reads, in order.

  Global batch b holds stream positions b*B .. b*B+B-1; host pi takes the
  contiguous slice [pi*L, (pi+1)*L) of each (L = B / host count). The
  stream, its shuffle and its augmentation do not depend on the number of
  hosts, so a run on 1 host and on N hosts sees the same global batches.
  """

  def __init__(self, stream_length: int, global_batch_size: int, pi: int, pc: int):
    self.local_bs = global_batch_size // pc
    self.global_bs = global_batch_size
    self.pi = pi
    self.length = (stream_length // global_batch_size) * self.local_bs

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, j: int) -> int:
    b, r = divmod(j, self.local_bs)
    return b * self.global_bs + self.pi * self.local_bs + r


@dataclasses.dataclass
class _FetchAugment:
  """Stream position -> augmented example, with a generator seeded by
  (seed, position): the same position gets the same augmentation on any host."""
  stream: Any
  config: AugmentConfig | None
  seed: int

  def __call__(self, position: int):
    example = self.stream[position]
    if example is None:
      return None
    if self.config is not None:
      rng = np.random.default_rng((self.seed, int(position)))
      example = apply_augment(example, rng, self.config)
    return _select(example)


def _not_none(example) -> bool:
  return example is not None


class BatchIterator:
  """Iterator of global batches with a Grain state to save and restore."""

  def __init__(self, host_iterator, sharding: jax.sharding.Sharding | None,
               global_batch_size: int, device_prefetch: int = 2):
    self._host = host_iterator
    self._sharding = sharding
    self._global_batch_size = global_batch_size
    self._device_prefetch = max(int(device_prefetch), 0)
    self._queue: collections.deque = collections.deque()
    self._state = copy.deepcopy(self._host.get_state())
    self._exhausted = False

  def _to_global(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    if self._sharding is None:
      return host_batch
    out = {}
    for key, local in host_batch.items():
      global_shape = (self._global_batch_size,) + local.shape[1:]
      out[key] = jax.make_array_from_process_local_data(self._sharding, local,
                                                       global_shape)
    return out

  def _fill(self) -> None:
    # Device transfers are asynchronous: keeping a few batches in flight
    # overlaps them with the training step.
    while not self._exhausted and len(self._queue) <= self._device_prefetch:
      try:
        host_batch = next(self._host)
      except StopIteration:
        self._exhausted = True
        break
      host_batch.pop("name", None)
      self._queue.append((self._to_global(host_batch),
                          copy.deepcopy(self._host.get_state())))

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    self._fill()
    if not self._queue:
      raise StopIteration
    batch, self._state = self._queue.popleft()
    return batch

  def get_state(self) -> dict[str, Any]:
    """State after the last batch returned (JSON-serialisable dict)."""
    return copy.deepcopy(self._state)

  def set_state(self, state: dict[str, Any]) -> None:
    """Resume so that the next batch is the one after `state` was taken."""
    self._host.set_state(copy.deepcopy(state))
    self._queue.clear()
    self._exhausted = False
    self._state = copy.deepcopy(state)


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise UserInputError(
        f"global batch size {global_batch_size} must be a positive multiple of "
        f"the number of hosts ({process_count}).")
  return global_batch_size // process_count


def make_train_iterator(
    source, global_batch_size: int, *, seed: int,
    sharding: jax.sharding.Sharding | None = None,
    augment: AugmentConfig | None = AugmentConfig(),
    num_epochs: int | None = None, num_threads: int = 4,
    prefetch_buffer_size: int = 64, worker_count: int = 0,
    device_prefetch: int = 2, process_index: int | None = None,
    process_count: int | None = None, to_jax: bool = True) -> BatchIterator:
  """Shuffled, augmented, repeating training batches (see module docstring).

  Args:
    source: random-access source (len + getitem -> example dict or None).
    global_batch_size: batch size over all hosts.
    seed: drives the shuffle and the augmentation.
    sharding: sharding of the batch axis; default batch_sharding().
    augment: AugmentConfig, or None for no augmentation.
    num_epochs: None repeats forever.
    num_threads: decoding threads per process.
    worker_count: Grain worker processes (0 = decode in this process).
    device_prefetch: batches kept in flight to the devices.
    to_jax: False returns host NumPy batches (tests, tools).
  """
  pi, pc = host_shard(process_index, process_count)
  local_bs = _local_batch_size(global_batch_size, pc)
  if len(source) == 0:
    raise UserInputError(f"{source!r} has no examples.")
  # One global stream (shuffled anew each epoch), the same for any number of
  # hosts; each host reads its slice of every global batch.
  stream = grain.MapDataset.source(source).shuffle(seed=seed).repeat(num_epochs)
  slots = _HostSlots(len(stream), global_batch_size, pi, pc)
  ds = grain.MapDataset.source(slots).map(_FetchAugment(stream, augment, seed))
  ds = ds.filter(_not_none)  # examples skipped by skip_bad sources
  it_ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size))
  it_ds = it_ds.batch(local_bs, drop_remainder=True, batch_fn=stack_examples)
  if worker_count > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # Grain reads absl flags (outside app.run too)
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  if to_jax and sharding is None:
    sharding = batch_sharding()
  return BatchIterator(iter(it_ds), sharding if to_jax else None,
                       global_batch_size, device_prefetch if to_jax else 0)


class _EvalIndex:
  """Host `pi`'s slots of every global batch, padded past the end."""

  def __init__(self, source, global_batch_size: int, pi: int, pc: int):
    self.source = source
    self.local_bs = global_batch_size // pc
    self.global_bs = global_batch_size
    self.pi = pi
    self.num_batches = max(math.ceil(len(source) / global_batch_size), 1)
    self._template = None

  def __len__(self) -> int:
    return self.num_batches * self.local_bs

  def _padding(self) -> dict[str, Any]:
    if self._template is None:
      first = next((ex for i in range(len(self.source))
                    if (ex := self.source[i]) is not None), None)
      if first is None:
        raise UserInputError(f"{self.source!r}: every example is bad or skipped.")
      self._template = {k: np.zeros_like(first[k]) for k in KEYS}
    return dict(self._template)

  def __getitem__(self, i: int) -> dict[str, Any]:
    b, j = divmod(i, self.local_bs)
    index = b * self.global_bs + self.pi * self.local_bs + j
    example = self.source[index] if index < len(self.source) else None
    if example is None:  # past the end, or skipped as bad
      out = self._padding()
      out["mask"] = np.bool_(False)
      return out
    out = _select(example)
    out.pop("name", None)
    out["mask"] = np.bool_(True)
    return out


def make_eval_iterator(
    source, global_batch_size: int, *,
    sharding: jax.sharding.Sharding | None = None, num_threads: int = 4,
    process_index: int | None = None, process_count: int | None = None,
    to_jax: bool = True) -> BatchIterator:
  """Every example once, in order (global batch b holds examples
  b*B .. b*B+B-1), no augmentation; the last batch is padded with zeros and
  mask_B marks the real entries."""
  pi, pc = host_shard(process_index, process_count)
  local_bs = _local_batch_size(global_batch_size, pc)
  ds = grain.MapDataset.source(_EvalIndex(source, global_batch_size, pi, pc))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                               prefetch_buffer_size=2 * local_bs))
  it_ds = it_ds.batch(local_bs, drop_remainder=True, batch_fn=stack_examples)
  if to_jax and sharding is None:
    sharding = batch_sharding()
  return BatchIterator(iter(it_ds), sharding if to_jax else None,
                       global_batch_size, 1 if to_jax else 0)


def num_eval_batches(source, global_batch_size: int) -> int:
  return max(math.ceil(len(source) / global_batch_size), 1)
