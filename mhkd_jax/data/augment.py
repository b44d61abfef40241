"""Pure-JAX epoch order, augmentation and normalisation for the train step.

CIFAR-scale splits stay on the accelerator as uint8, and the jitted step
draws the epoch order, gathers a batch, crops/flips and normalises it. Doing
this on the device means no host pipeline can starve the step; being pure
functions of an RNG key means a resumed run reproduces the same batches and
the same augmentation, and that the result does not depend on how the batch
is sharded over devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def epoch_permutation(
  rng: jax.Array, epoch: int | jax.Array, num_examples: int
) -> jax.Array:
  """The order in which epoch `epoch` visits the training set.

  Derived from `fold_in(rng, epoch)` alone (not from a key threaded through
  the run), so that a run resumed from a checkpoint at any step of an epoch
  sees exactly the order the uninterrupted run saw.

  Args:
    rng: the data key of the run (typed or raw uint32 key).
    epoch: the epoch number; may be a traced integer inside `jit`.
    num_examples: size of the resident split (static).

  Returns:
    int32 [num_examples], a permutation of 0..num_examples-1.
  """
  key = jax.random.fold_in(rng, epoch)
  return jax.random.permutation(key, num_examples).astype(jnp.int32)


def crop_flip_params(
  key: jax.Array, padding: int
) -> tuple[jax.Array, jax.Array]:
  """One example's crop offsets (dy, dx) in [0, 2*padding] and flip bit.

  Kept separate and per-key so that the recipe is explicit: example i of a
  batch uses `key = jax.random.split(rng, batch)[i]`, split again into a crop
  key (offsets: `randint(crop_key, (2,), 0, 2*padding+1)`) and a flip key
  (`bernoulli(flip_key)`, p=0.5).
  """
  crop_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(crop_key, (2,), 0, 2 * padding + 1)
  return offsets, jax.random.bernoulli(flip_key)


def random_crop_flip(
  rng: jax.Array,
  images_uint8: jax.Array,
  *,
  padding: int = 4,
  flip: bool = True,
) -> jax.Array:
  """Zero-pad, random-crop back to HxW and randomly mirror, per example.

  Matches torchvision's `RandomCrop(H, padding=padding)` (zero fill) followed
  by `RandomHorizontalFlip()`. Each example's randomness comes from its own
  key, `jax.random.split(rng, batch)[i]` (see `crop_flip_params`), never from
  device-local state: the result is the same whether the batch is sharded
  over devices or not, and example i's augmentation does not depend on the
  other examples.

  Args:
    rng: key for this batch.
    images_uint8: [B, H, W, C] images (any dtype; uint8 in the step).
    padding: zero padding on each side before cropping; 0 disables the crop.
    flip: whether to mirror horizontally with probability 0.5.

  Returns:
    Augmented images with the input's shape and dtype.
  """
  batch, height, width, channels = images_uint8.shape
  keys = jax.random.split(rng, batch)
  padded = jnp.pad(
    images_uint8,
    ((0, 0), (padding, padding), (padding, padding), (0, 0)),
  )

  def augment_one(key: jax.Array, image: jax.Array) -> jax.Array:
    offsets, do_flip = crop_flip_params(key, padding)
    out = jax.lax.dynamic_slice(
      image, (offsets[0], offsets[1], 0), (height, width, channels)
    )
    if flip:
      out = jnp.where(do_flip, out[:, ::-1, :], out)
    return out

  return jax.vmap(augment_one)(keys, padded)


def normalize(
  images_uint8: jax.Array,
  mean: Sequence[float] | jax.Array,
  std: Sequence[float] | jax.Array,
) -> jax.Array:
  """Returns float32 `(x / 255 - mean) / std`, per channel (last axis).

  The same transform as torchvision's `ToTensor()` + `Normalize(mean, std)`,
  so models trained here see the inputs the PyTorch baselines saw.
  """
  x = images_uint8.astype(jnp.float32) / 255.0
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (x - mean) / std
