"""The cost of MLKD's strong view against the weak crop and flip.

  python -m experiments.benchmark_strong_view [--batch=64] [--size=32]

Times ``augment.strong_augment`` and ``augment.random_crop_flip``, each
jitted, on random uint8 batches on the default device: the median over
``--rounds`` of the mean of ``--calls`` calls (compile excluded). Prints
milliseconds per batch.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mhkd_jax.data import augment


def time_per_batch(fn, images, rounds: int, calls: int) -> float:
  """Median over rounds of the mean seconds of one call."""
  jax.block_until_ready(fn(jax.random.key(0), images))
  means = []
  for r in range(rounds):
    start = time.perf_counter()
    for i in range(calls):
      out = fn(jax.random.key(r * calls + i), images)
    jax.block_until_ready(out)
    means.append((time.perf_counter() - start) / calls)
  return statistics.median(means)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--size', type=int, default=32)
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--calls', type=int, default=10)
  args = p.parse_args(argv)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(
    0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8))
  print(f'device: {jax.devices()[0].device_kind}, batch {args.batch} x '
        f'{args.size}x{args.size}x3')
  for name, fn in (('weak (crop + flip)', augment.random_crop_flip),
                   ('strong (MLKD)', augment.strong_augment)):
    ms = 1000 * time_per_batch(jax.jit(fn), images, args.rounds, args.calls)
    print(f'{name}: {ms:.2f} ms per batch')


if __name__ == '__main__':
  main()
