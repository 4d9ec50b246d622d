"""Parameter counts per part of a model.

  python -m percdepth_jax.models.summary [--encoder densenet121] [--decoder-width 1.0]
"""

from __future__ import annotations

import argparse

import jax
from flax import nnx


def parameter_counts(module: nnx.Module) -> dict[str, int]:
  """Trainable parameters (not BatchNorm statistics) per top-level part, plus total."""
  state = nnx.state(module, nnx.Param)
  counts = {name: sum(int(x.size) for x in jax.tree.leaves(sub))
            for name, sub in state.items()}
  counts["total"] = sum(counts.values())
  return counts


def format_parameter_counts(module: nnx.Module) -> str:
  counts = parameter_counts(module)
  width = max(len(k) for k in counts)
  lines = [f"{type(module).__name__} parameters:"]
  lines += [f"  {name:<{width}}  {n:>12,d}  ({n / 1e6:.2f}M)" for name, n in counts.items()]
  return "\n".join(lines)


def main() -> None:
  from percdepth_jax.models import DepthNet, ModelConfig
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--encoder", default="densenet121")
  parser.add_argument("--decoder-width", type=float, default=1.0)
  args = parser.parse_args()
  config = ModelConfig(encoder=args.encoder, decoder_width=args.decoder_width)
  model = nnx.eval_shape(lambda: DepthNet(config, rngs=nnx.Rngs(0)))
  print(format_parameter_counts(model))
  decoder = nnx.state(model.decoder, nnx.Param)
  for name, sub in decoder.items():
    print(f"    decoder.{name:<6} {sum(int(x.size) for x in jax.tree.leaves(sub)):>12,d}")


if __name__ == "__main__":
  main()
