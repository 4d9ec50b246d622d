"""Data: sources (synthetic rooms, RGB-D folders, NYU zip/TFDS), augmentation,
and the Grain pipeline to sharded global batches.

Sources are random-access (len + getitem) and yield dicts
{"image": uint8 HxWx3, "depth": float32 HxW metres (0 = invalid),
"valid": bool HxW} plus "intrinsics" (fx, fy, cx, cy) and "name" when known.
The pipeline (and JAX) is imported lazily: sources stay cheap to import.
"""

from percdepth_jax.data.augment import AugmentConfig, augment
from percdepth_jax.data.folder import FolderSource, write_folder
from percdepth_jax.data.nyu_tfds import TfdsNyuSource
from percdepth_jax.data.nyu_zip import NyuZipSource
from percdepth_jax.data.specs import resolve_spec
from percdepth_jax.data.synthetic import SyntheticSource

__all__ = [
    "AugmentConfig", "augment", "FolderSource", "write_folder", "TfdsNyuSource",
    "NyuZipSource", "resolve_spec", "SyntheticSource", "make_train_iterator",
    "make_eval_iterator", "batch_sharding",
]


def __getattr__(name):
  if name in ("make_train_iterator", "make_eval_iterator", "batch_sharding",
              "BatchIterator", "num_eval_batches"):
    from percdepth_jax.data import pipeline
    return getattr(pipeline, name)
  raise AttributeError(f"module 'percdepth_jax.data' has no attribute {name!r}")
