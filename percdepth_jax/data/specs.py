"""`--data SPEC` strings (docs/design.md, 'Data') -> random-access sources.

  synthetic:N[:seed]            N procedural rooms (seed default 0)
  folder:PATH/manifest.csv      an RGB-D folder
  nyu_zip:PATH/nyu_data.zip[:train|test]
  tfds:nyu_depth_v2[:split]     train or validation (TFDS_DATA_DIR or ~/tensorflow_datasets)

Where a spec names no split, `split` (the caller's default) picks it: training
passes "train", evaluation "test".
"""

from __future__ import annotations

from percdepth_jax.errors import UserInputError

_USAGE = ("Valid forms: synthetic:N[:seed], folder:PATH/manifest.csv, "
          "nyu_zip:PATH/nyu_data.zip[:train|test], tfds:nyu_depth_v2[:train|validation].")


def _int(text: str, what: str, spec: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise UserInputError(f"--data {spec!r}: {what} {text!r} is not an integer. "
                         + _USAGE) from None


def resolve_spec(spec: str, *, split: str = "train", height: int = 480,
                 width: int = 640, skip_bad: bool = False, data_dir: str | None = None):
  """Builds the source a spec names. `height`/`width` size synthetic scenes."""
  kind, sep, rest = spec.partition(":")
  if not sep or not rest:
    raise UserInputError(f"--data {spec!r} is not a data spec. " + _USAGE)
  if kind == "synthetic":
    from percdepth_jax.data.synthetic import SyntheticSource
    parts = rest.split(":")
    if len(parts) > 2:
      raise UserInputError(f"--data {spec!r}: too many fields. " + _USAGE)
    num = _int(parts[0], "size N", spec)
    seed = _int(parts[1], "seed", spec) if len(parts) == 2 else 0
    if num < 1:
      raise UserInputError(f"--data {spec!r}: N must be >= 1. " + _USAGE)
    # Evaluation draws from a different seed stream than training.
    if split != "train" and len(parts) == 1:
      seed = 1_000_003
    return SyntheticSource(num, seed, height, width)
  if kind == "folder":
    from percdepth_jax.data.folder import FolderSource
    return FolderSource(rest, skip_bad=skip_bad)
  if kind == "nyu_zip":
    from percdepth_jax.data.nyu_zip import NyuZipSource
    path, zsplit = rest, ("train" if split == "train" else "test")
    for name in ("train", "test"):
      if rest.endswith(":" + name):
        path, zsplit = rest[:-len(name) - 1], name
    return NyuZipSource(path, zsplit, skip_bad=skip_bad)
  if kind == "tfds":
    from percdepth_jax.data.nyu_tfds import NAME, TfdsNyuSource
    name, _, tsplit = rest.partition(":")
    if name != NAME:
      raise UserInputError(f"--data {spec!r}: only tfds:{NAME} is supported. " + _USAGE)
    return TfdsNyuSource(tsplit or split, data_dir=data_dir, skip_bad=skip_bad)
  raise UserInputError(f"--data {spec!r}: unknown kind {kind!r}. " + _USAGE)
