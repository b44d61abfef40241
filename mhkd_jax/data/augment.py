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


# --------------------------------------------------------------------------
# The strong view: MLKD's RandAugment, on the device.
#
# MLKD's CIFAR loader (its authors' mdistiller/dataset/cifar100.py, kept as
# is in the LS code) gives every training image two views: the weak one
# (crop + flip) and a strong one: its own crop + flip, then RandAugment(2,
# 10): two ops drawn with replacement from the 14 below, each at a
# magnitude drawn uniformly from the op's range (the 10 is unused), then
# Cutout of a square of side U(0, 0.5) x width. The ops here are those
# ops on uint8 images, written as PIL computes them (its 8-bit enhance
# blend, luma, LUTs and nearest-neighbour affine sampling at pixel
# centres); tests/strong_augment_test.py compares each with PIL.
# Differences: float32 where PIL uses double or its own rounding (the
# blends, the smoothing filter, autocontrast's stretch: at most one level,
# on under 1% of the values in the tests), and the random draws are JAX's,
# keyed per example, not Python's global ``random``. Equalize, posterize,
# solarize, rotate, shear, translate and cutout match PIL exactly there.

# (name, low, high): the authors' augment_list, in its order.
RAND_AUGMENT_OPS = (
  ('auto_contrast', 0.0, 1.0), ('brightness', 0.05, 0.95),
  ('color', 0.05, 0.95), ('contrast', 0.05, 0.95), ('equalize', 0.0, 1.0),
  ('identity', 0.0, 1.0), ('posterize', 4.0, 8.0), ('rotate', -30.0, 30.0),
  ('sharpness', 0.05, 0.95), ('shear_x', -0.3, 0.3),
  ('shear_y', -0.3, 0.3), ('solarize', 0.0, 256.0),
  ('translate_x', -0.3, 0.3), ('translate_y', -0.3, 0.3),
)
RAND_AUGMENT_NUM_OPS = 2
# Cutout: side U(0, CUTOUT_MAX) x width, this colour (RGB).
CUTOUT_MAX = 0.5
CUTOUT_FILL = (125, 123, 114)


def _luma(image: jax.Array) -> jax.Array:
  """PIL's RGB -> L (ITU-R 601-2 in 16-bit fixed point), int32 [H, W, 1];
  a one-channel image is its own luma."""
  x = image.astype(jnp.int32)
  if x.shape[-1] == 1:
    return x
  y = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471
       + 0x8000) >> 16
  return y[..., None]


def _blend(degenerate: jax.Array, image: jax.Array,
           factor: jax.Array) -> jax.Array:
  """PIL's Image.blend(degenerate, image, factor) for 0 <= factor <= 1:
  the float interpolation truncated to uint8 (ImageEnhance's ``enhance``)."""
  d = degenerate.astype(jnp.float32)
  out = d + factor.astype(jnp.float32) * (image.astype(jnp.float32) - d)
  return jnp.clip(jnp.floor(out), 0, 255).astype(jnp.uint8)


def _per_channel_lut(image: jax.Array, lut_fn) -> jax.Array:
  """Applies ``lut_fn(channel) -> int32 [256]`` to each channel."""
  channels = []
  for k in range(image.shape[-1]):
    x = image[..., k].astype(jnp.int32)
    lut = jnp.clip(lut_fn(x), 0, 255).astype(jnp.uint8)
    channels.append(lut[x])
  return jnp.stack(channels, axis=-1)


def _histogram(x: jax.Array) -> jax.Array:
  return jnp.zeros((256,), jnp.int32).at[x.reshape(-1)].add(1)


def auto_contrast(image: jax.Array, v: jax.Array) -> jax.Array:
  """ImageOps.autocontrast (no cutoff): each channel's [min, max] -> [0,
  255]; a constant channel is left as is."""
  del v

  def lut(x):
    lo, hi = jnp.min(x), jnp.max(x)
    levels = jnp.arange(256, dtype=jnp.int32)
    # PIL: int(ix * 255 / (hi - lo) - lo * 255 / (hi - lo)), in double;
    # exact integer floor here.
    stretched = (levels - lo) * 255 // jnp.maximum(hi - lo, 1)
    return jnp.where(hi > lo, stretched, levels)

  return _per_channel_lut(image, lut)


def equalize(image: jax.Array, v: jax.Array) -> jax.Array:
  """ImageOps.equalize, per channel: PIL's cumulative-histogram LUT with
  step (pixels - count of the top level) // 255."""
  del v

  def lut(x):
    hist = _histogram(x)
    levels = jnp.arange(256, dtype=jnp.int32)
    top = jnp.max(jnp.where(hist > 0, levels, -1))
    step = (x.size - hist[top]) // 255
    before = jnp.cumsum(hist) - hist
    lut = (step // 2 + before) // jnp.maximum(step, 1)
    keep = (step == 0) | (jnp.sum(hist > 0) <= 1)
    return jnp.where(keep, levels, lut)

  return _per_channel_lut(image, lut)


def identity(image: jax.Array, v: jax.Array) -> jax.Array:
  del v
  return image


def brightness(image: jax.Array, v: jax.Array) -> jax.Array:
  """ImageEnhance.Brightness: a blend with black."""
  return _blend(jnp.zeros_like(image), image, v)


def color(image: jax.Array, v: jax.Array) -> jax.Array:
  """ImageEnhance.Color: a blend with the image's luma."""
  gray = jnp.broadcast_to(_luma(image), image.shape)
  return _blend(gray, image, v)


def contrast(image: jax.Array, v: jax.Array) -> jax.Array:
  """ImageEnhance.Contrast: a blend with the mean luma (rounded)."""
  mean = jnp.floor(jnp.mean(_luma(image).astype(jnp.float32)) + 0.5)
  return _blend(jnp.full(image.shape, mean), image, v)


def sharpness(image: jax.Array, v: jax.Array) -> jax.Array:
  """ImageEnhance.Sharpness: a blend with ImageFilter.SMOOTH (3x3 ones,
  centre 5, over 13, rounded; the border pixels kept)."""
  x = image.astype(jnp.float32)
  h, w = x.shape[:2]
  padded = jnp.pad(x, ((1, 1), (1, 1), (0, 0)))
  total = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3)
              for dx in range(3)) + 4.0 * x
  smooth = jnp.floor(total / 13.0 + 0.5)
  border = jnp.zeros((h, w, 1), bool)
  border = border.at[0].set(True).at[-1].set(True)
  border = border.at[:, 0].set(True).at[:, -1].set(True)
  smooth = jnp.where(border, x, smooth)
  return _blend(smooth, image, v)


def posterize(image: jax.Array, v: jax.Array) -> jax.Array:
  """ImageOps.posterize to max(1, int(v)) bits."""
  bits = jnp.maximum(1, v.astype(jnp.int32))
  mask = (0xFF << (8 - bits)) & 0xFF
  return (image.astype(jnp.int32) & mask).astype(jnp.uint8)


def solarize(image: jax.Array, v: jax.Array) -> jax.Array:
  """ImageOps.solarize: levels at or above the threshold inverted."""
  x = image.astype(jnp.int32)
  return jnp.where(x < v, x, 255 - x).astype(jnp.uint8)


def _affine(image: jax.Array, matrix) -> jax.Array:
  """PIL's Image.transform(AFFINE, NEAREST), fill 0: output pixel (x, y)
  takes the input pixel under (a X + b Y + c, d X + e Y + f) at its centre
  (X, Y) = (x + 0.5, y + 0.5), or 0 outside the image."""
  a, b, c, d, e, f = matrix
  h, w = image.shape[:2]
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5,
                        jnp.arange(w, dtype=jnp.float32) + 0.5,
                        indexing='ij')
  src_x = jnp.floor(a * xs + b * ys + c).astype(jnp.int32)
  src_y = jnp.floor(d * xs + e * ys + f).astype(jnp.int32)
  inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
  out = image[jnp.clip(src_y, 0, h - 1), jnp.clip(src_x, 0, w - 1)]
  return jnp.where(inside[..., None], out, jnp.zeros_like(out))


def rotate(image: jax.Array, v: jax.Array) -> jax.Array:
  """Image.rotate(v): v degrees counter-clockwise about the centre."""
  h, w = image.shape[:2]
  angle = -jnp.deg2rad(v.astype(jnp.float32))
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  cx, cy = w / 2.0, h / 2.0
  # PIL's matrix: the rotation about the centre, as input = M(output).
  return _affine(image, (cos, sin, cx - cos * cx - sin * cy,
                         -sin, cos, cy + sin * cx - cos * cy))


def shear_x(image: jax.Array, v: jax.Array) -> jax.Array:
  """AFFINE (1, v, 0, 0, 1, 0): a shear about the top-left corner."""
  return _affine(image, (1.0, v, 0.0, 0.0, 1.0, 0.0))


def shear_y(image: jax.Array, v: jax.Array) -> jax.Array:
  return _affine(image, (1.0, 0.0, 0.0, v, 1.0, 0.0))


def translate_x(image: jax.Array, v: jax.Array) -> jax.Array:
  """AFFINE (1, 0, v * width, 0, 1, 0)."""
  return _affine(image, (1.0, 0.0, v * image.shape[1], 0.0, 1.0, 0.0))


def translate_y(image: jax.Array, v: jax.Array) -> jax.Array:
  return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, v * image.shape[0]))


_OPS = {
  'auto_contrast': auto_contrast, 'brightness': brightness, 'color': color,
  'contrast': contrast, 'equalize': equalize, 'identity': identity,
  'posterize': posterize, 'rotate': rotate, 'sharpness': sharpness,
  'shear_x': shear_x, 'shear_y': shear_y, 'solarize': solarize,
  'translate_x': translate_x, 'translate_y': translate_y,
}


def cutout(image: jax.Array, size: jax.Array, x0: jax.Array,
           y0: jax.Array) -> jax.Array:
  """The authors' Cutout: a ``size``-pixel square from the corner
  (int(max(0, x0 - size/2)), ...) to min(width, corner + size), both ends
  included (ImageDraw.rectangle), in CUTOUT_FILL; size 0 leaves the image.
  A one-channel image gets the colour's luma."""
  h, w, channels = image.shape
  fill = jnp.asarray(CUTOUT_FILL, jnp.uint8).reshape(1, 1, 3)
  if channels == 1:
    fill = _luma(fill).astype(jnp.uint8)
  left = jnp.floor(jnp.maximum(0.0, x0 - size / 2.0))
  top = jnp.floor(jnp.maximum(0.0, y0 - size / 2.0))
  right = jnp.floor(jnp.minimum(w, left + size))
  bottom = jnp.floor(jnp.minimum(h, top + size))
  ys = jnp.arange(h, dtype=jnp.float32)[:, None, None]
  xs = jnp.arange(w, dtype=jnp.float32)[None, :, None]
  inside = ((xs >= left) & (xs <= right) & (ys >= top) & (ys <= bottom)
            & (size > 0))
  return jnp.where(inside, fill, image)


def rand_augment_params(key: jax.Array) -> dict[str, jax.Array]:
  """One example's draws: op indices (2,), their magnitudes in [0, 1),
  the cutout's size fraction and centre (in [0, 1): scaled to (1, W] as
  the authors' ``np.random.uniform(w)`` draws it)."""
  op_key, value_key, cut_key = jax.random.split(key, 3)
  return {
    'ops': jax.random.randint(op_key, (RAND_AUGMENT_NUM_OPS,), 0,
                              len(RAND_AUGMENT_OPS)),
    'values': jax.random.uniform(value_key, (RAND_AUGMENT_NUM_OPS,)),
    'cutout': jax.random.uniform(cut_key, (3,)),
  }


def _apply_drawn_op(images: jax.Array, index: jax.Array,
                    u: jax.Array) -> jax.Array:
  """Example i gets op ``index[i]`` at magnitude low + (high - low) u[i].

  Every op runs on the whole batch and each example keeps its own op's
  result: on accelerators 14 small elementwise or gather programs cost
  little, and it avoids ``lax.switch`` under ``vmap`` (which evaluates
  every branch anyway, and measured several times slower on CPU).
  """
  out = images
  for k, (name, low, high) in enumerate(RAND_AUGMENT_OPS):
    result = jax.vmap(_OPS[name])(images, low + (high - low) * u)
    out = jnp.where((index == k)[:, None, None, None], result, out)
  return out


def rand_augment(images: jax.Array, params: dict) -> jax.Array:
  """RandAugment(2, 10) then Cutout on uint8 [B, H, W, C] images, with
  each example's draws (``rand_augment_params``, batched)."""
  for k in range(RAND_AUGMENT_NUM_OPS):
    images = _apply_drawn_op(images, params['ops'][:, k],
                             params['values'][:, k])
  h, w = images.shape[1:3]
  fraction, u_x, u_y = (params['cutout'][:, i] for i in range(3))
  # numpy's uniform(w) is uniform(low=w, high=1): w + (1 - w) * u.
  return jax.vmap(cutout)(images, fraction * CUTOUT_MAX * w,
                          w + (1.0 - w) * u_x, h + (1.0 - h) * u_y)


def strong_augment(
  rng: jax.Array, images_uint8: jax.Array, *, padding: int = 4,
  flip: bool = True,
) -> jax.Array:
  """The strong view of a batch: its own crop and flip, then RandAugment
  and Cutout per example (each from its own key, as ``random_crop_flip``).
  Same shape and dtype (uint8) as the input."""
  crop_key, augment_key = jax.random.split(rng)
  images = random_crop_flip(crop_key, images_uint8, padding=padding,
                            flip=flip)
  keys = jax.random.split(augment_key, images.shape[0])
  return rand_augment(images, jax.vmap(rand_augment_params)(keys))
