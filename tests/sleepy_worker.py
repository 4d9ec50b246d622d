"""A benchmark worker whose steps sleep SLEEPY_MS milliseconds (an
environment variable, so a --variant can slow it down): the harness's
timing and ratios checked against a known answer, with no framework."""

import os
import sys
import time

from percdepth_jax.benchmark_workers import Workload, serve


def build(spec: dict) -> Workload:
  print("a library's chatter on stdout must not reach the harness")
  ms = float(os.environ["SLEEPY_MS"])
  w = Workload("sleepy", spec["mode"], lambda n: time.sleep(n * ms / 1e3), compile_s=0.01,
               flops_per_step=1e9)
  w.info = {"device": "sleepy", "versions": {"sleepy": "1"}}
  return w


if __name__ == "__main__":
  sys.exit(serve(build))
