"""``synthetic_cifar100``: CIFAR-100-shaped data made on the fly.

For runs that must read nothing: the accelerator check's run of the real
loop (``experiments/accelerator_check.py``) on a machine that has neither
the data nor TensorFlow/TFDS, and tests. It needs numpy only.

Each class has a prototype: a random 4x4x3 grid of intensities in
[64, 192], upsampled to 32x32 (low-frequency, so convolutions find it
after crops and flips). An example is its class's prototype plus
independent uniform noise in [-63, 63] per pixel, which never leaves
[1, 255]: no clipping, so the data set's statistics follow from the
prototypes and the noise's known variance (``MEAN``, ``STD``).
The noise is as large as the spread between prototypes, so a network has
something to learn and does not learn it in one step.

Examples are made in chunks of ``_CHUNK``, each from its own seed, so the
first ``n`` examples of a split are the same whatever ``n`` is asked for
(as a prefix of a TFDS split is).
"""

from __future__ import annotations

import numpy as np

NAME = 'synthetic_cifar100'
NUM_CLASSES = 100
IMAGE_SHAPE = (32, 32, 3)
# CIFAR-100's split sizes.
SPLIT_SIZES = {'train': 50_000, 'test': 10_000}

_GRID = 4
_PROTO_LOW, _PROTO_HIGH = 64, 192  # inclusive
_NOISE = 63  # noise in [-_NOISE, _NOISE]
_CHUNK = 1_000
_PROTOTYPE_SEED = 0
_SPLIT_SEEDS = {'train': 1, 'test': 2}

def prototypes() -> np.ndarray:
  """int16 [NUM_CLASSES, 32, 32, 3]: each class's noise-free image."""
  rng = np.random.default_rng(_PROTOTYPE_SEED)
  grid = rng.integers(
    _PROTO_LOW, _PROTO_HIGH + 1, (NUM_CLASSES, _GRID, _GRID, 3),
    dtype=np.int16,
  )
  scale = IMAGE_SHAPE[0] // _GRID
  return np.repeat(np.repeat(grid, scale, axis=1), scale, axis=2)


def _statistics():
  """Per-channel mean and std in [0, 1] units over the examples, labels
  uniform: the prototypes' mean, and their variance plus the noise's
  (independent of them): (127**2 - 1) / 12 for 127 equally likely values.
  Exact up to the labels' sampling, which the tests bound."""
  protos = prototypes().astype(np.float64)
  noise_var = ((2 * _NOISE + 1) ** 2 - 1) / 12
  mean = protos.mean(axis=(0, 1, 2)) / 255
  std = np.sqrt(protos.var(axis=(0, 1, 2)) + noise_var) / 255
  return tuple(map(float, mean)), tuple(map(float, std))


MEAN, STD = _statistics()


def read_split(
  split: str, num_examples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """The first ``num_examples`` (None: all) of ``split``.

  Returns:
    uint8 [N, 32, 32, 3] images and int32 [N] labels in [0, 100).

  Raises:
    ValueError: an unknown split (the valid ones are named), or more
      examples than the split has.
  """
  if split not in SPLIT_SIZES:
    raise ValueError(
      f'{NAME} has the splits {", ".join(SPLIT_SIZES)}; got {split!r}.'
    )
  size = SPLIT_SIZES[split]
  n = size if num_examples is None else num_examples
  if not 0 < n <= size:
    raise ValueError(f'{NAME}/{split} has {size} examples; {n} requested.')
  protos = prototypes()
  images = np.empty((n, *IMAGE_SHAPE), np.uint8)
  labels = np.empty((n,), np.int32)
  for start in range(0, n, _CHUNK):
    rng = np.random.default_rng((_SPLIT_SEEDS[split], start // _CHUNK))
    count = min(_CHUNK, n - start)
    # A whole chunk is drawn even when fewer are kept: the prefix property.
    y = rng.integers(0, NUM_CLASSES, (_CHUNK,), dtype=np.int32)[:count]
    noise = rng.integers(
      -_NOISE, _NOISE + 1, (_CHUNK, *IMAGE_SHAPE), dtype=np.int16
    )[:count]
    images[start:start + count] = protos[y] + noise
    labels[start:start + count] = y
  return images, labels
