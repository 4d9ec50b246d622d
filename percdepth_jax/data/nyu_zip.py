"""DenseDepth's nyu_data.zip, read in place (no extraction).

Layout: data/nyu2_train.csv and data/nyu2_test.csv, rows `rgb,depth` with
member paths inside the zip. Train depth is an 8-bit PNG (metres =
v / 255 * 10); test depth a 16-bit PNG in millimetres. The encoding is taken
from the PNG itself (8-bit vs 16-bit), so either split decodes correctly.
"""

from __future__ import annotations

import csv
import io
import os
import threading
import zipfile
from typing import Any

import numpy as np

from percdepth_jax.data import decode
from percdepth_jax.errors import UserInputError

SPLITS = {"train": "nyu2_train.csv", "test": "nyu2_test.csv"}


class NyuZipSource(decode.FileSource):
  """Random-access source over one split of nyu_data.zip."""

  def __init__(self, path: str | os.PathLike, split: str = "train", *,
               skip_bad: bool = False):
    self.path = os.fspath(path)
    if split not in SPLITS:
      raise UserInputError(
          f"nyu_zip split {split!r} is unknown; use one of {sorted(SPLITS)}.")
    self.split = split
    if not os.path.isfile(self.path):
      raise UserInputError(
          f"{self.path}: file not found. Download DenseDepth's nyu_data.zip "
          "(see docs/data.md) and pass its path.")
    try:
      zf = zipfile.ZipFile(self.path)
    except (zipfile.BadZipFile, OSError) as e:
      raise UserInputError(
          f"{self.path}: not a readable zip ({e}); re-download it.") from None
    with zf:
      names = set(zf.namelist())
      csv_name = SPLITS[split]
      candidates = [n for n in ("data/" + csv_name, csv_name) if n in names]
      candidates += sorted(n for n in names if n.endswith("/" + csv_name))
      if not candidates:
        raise UserInputError(
            f"{self.path}: no {csv_name} in the zip (expected data/{csv_name}, "
            "as in DenseDepth's nyu_data.zip). Check that this is the right "
            "file or re-download it.")
      self.csv_name = candidates[0]
      text = zf.read(self.csv_name).decode("utf-8")
    self.rows = [(r[0].strip(), r[1].strip())
                 for r in csv.reader(io.StringIO(text)) if len(r) >= 2 and r[0].strip()]
    if not self.rows:
      raise UserInputError(f"{self.path}: {self.csv_name} lists no examples.")
    missing = [m for row in self.rows for m in row if m not in names]
    if missing and not skip_bad:
      raise UserInputError(
          f"{self.path}: {len(missing)} file(s) listed in {self.csv_name} are "
          f"not in the zip (first: {missing[0]}). The zip is incomplete: "
          "re-download it.")
    self._skip = decode.SkipCounter(skip_bad)
    self._local = threading.local()


  def _zip(self) -> zipfile.ZipFile:
    # One handle per thread (and per process: it is not pickled).
    zf = getattr(self._local, "zf", None)
    if zf is None:
      zf = self._local.zf = zipfile.ZipFile(self.path)
    return zf

  def __getstate__(self):
    state = dict(self.__dict__)
    del state["_local"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def __len__(self) -> int:
    return len(self.rows)

  def _read(self, member: str) -> bytes:
    try:
      return self._zip().read(member)
    except KeyError:
      raise UserInputError(
          f"{self.path}: member {member} (listed in {self.csv_name}) is not in "
          "the zip; re-download it.") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise UserInputError(
          f"{self.path}: cannot read member {member} ({e}); the zip is "
          "corrupt: re-download it.") from None

  def load(self, index: int) -> dict[str, Any]:
    rgb_member, depth_member = self.rows[index]
    rgb_name, depth_name = f"{self.path}:{rgb_member}", f"{self.path}:{depth_member}"
    image = decode.decode_rgb(self._read(rgb_member), rgb_name)
    stored = decode.decode_depth_png(self._read(depth_member), depth_name,
                                     allow_8bit=True)
    # Train PNGs are 8-bit (metres = v / 255 * 10), test PNGs 16-bit mm.
    depth_m, valid = decode.scale_stored_depth(
        stored, 10.0 / 255.0 if stored.dtype == np.uint8 else 1e-3)
    example = decode.make_example(image, depth_m, rgb_name=rgb_name,
                                  depth_name=depth_name, valid=valid)
    example["name"] = rgb_member
    return example


  def __repr__(self) -> str:
    return f"NyuZipSource({self.path!r}, split={self.split!r}, {len(self)} examples)"
