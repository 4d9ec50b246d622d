"""NYU Depth v2 as prepared by TFDS (`nyu_depth_v2`), read without TensorFlow.

`tfds.data_source` reads the prepared ArrayRecord files with NumPy only, so
no TensorFlow (and no GPU grab) is needed. Preparing the dataset needs
TensorFlow and network: do it once on a connected machine (docs/data.md).
Examples: image uint8 480x640x3, depth float16 metres (0 = invalid).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from percdepth_jax.data import decode
from percdepth_jax.data.camera import nyu_intrinsics
from percdepth_jax.errors import UserInputError

NAME = "nyu_depth_v2"
SPLIT_ALIASES = {"train": "train", "validation": "validation", "val": "validation",
                 "test": "validation"}


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


class TfdsNyuSource(decode.FileSource):
  """Random-access source over one split of the prepared `nyu_depth_v2`."""

  def __init__(self, split: str = "train", data_dir: str | None = None, *,
               skip_bad: bool = False):
    if split not in SPLIT_ALIASES:
      raise UserInputError(
          f"tfds:{NAME} split {split!r} is unknown; use train or validation "
          "(the 654 test images).")
    self.split = SPLIT_ALIASES[split]
    self.data_dir = data_dir or default_data_dir()
    import tensorflow_datasets as tfds
    try:
      self._source = tfds.data_source(NAME, split=self.split, data_dir=self.data_dir,
                                      download=False)
    except Exception as e:  # tfds raises AssertionError / DatasetNotFoundError
      raise UserInputError(
          f"tfds:{NAME}: no prepared dataset found under {self.data_dir} "
          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
          "Prepare it on a machine with network and TensorFlow "
          f"(`tfds build {NAME} --file_format=array_record`), copy the "
          "tensorflow_datasets folder here, and set TFDS_DATA_DIR or pass "
          "data_dir.") from None
    self._skip = decode.SkipCounter(skip_bad)


  def __len__(self) -> int:
    return len(self._source)

  def load(self, index: int) -> dict[str, Any]:
    record = self._source[index]
    depth_m = np.asarray(record["depth"], np.float32)
    name = f"tfds:{NAME}/{self.split}[{index}]"
    example = decode.make_example(np.asarray(record["image"], np.uint8), depth_m,
                                  rgb_name=name, depth_name=name)
    example["intrinsics"] = nyu_intrinsics()
    example["name"] = name
    return example


  def __repr__(self) -> str:
    return f"TfdsNyuSource(split={self.split!r}, {len(self)} examples)"
