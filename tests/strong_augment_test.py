"""MLKD's strong view (``augment.strong_augment``) and how batches carry it.

Each op is compared with PIL, the library MLKD's loader calls (pillow is
installed with matplotlib): the integer ops and the geometric ones exactly,
the enhance blends and autocontrast to one level on at most 2% of the
values (PIL rounds those its own way; measured: at most 0.5%).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhkd_jax import distill, parallel, steps, train_state
from mhkd_jax.configs import test as test_config
from mhkd_jax.data import augment, datasets, input_pipeline
from mhkd_jax.distill import base
from mhkd_jax.models import create_model
from mhkd_jax.run import errors, validation

PIL = pytest.importorskip('PIL', reason='the op references need pillow')
from PIL import Image, ImageDraw, ImageEnhance, ImageOps  # noqa: E402

OPS = [name for name, _, _ in augment.RAND_AUGMENT_OPS]
# The ops PIL rounds its own way: the enhance ops' degenerate images (luma,
# mean, smoothing filter), and autocontrast's double-precision
# ix * scale + offset, which truncates a level low where the exact
# stretch here is an integer.
BLENDS = ('auto_contrast', 'color', 'contrast', 'sharpness')


def _images(n, size=32, channels=3, seed=0):
  """Blocky images with noise: flat regions and edges, like photographs
  (uniform noise would make every histogram op trivial)."""
  rng = np.random.default_rng(seed)
  base_ = rng.integers(0, 256, (n, 4, 4, channels)).astype(np.float32)
  up = np.kron(base_, np.ones((1, size // 4, size // 4, 1)))
  noisy = up + rng.normal(0, 20, up.shape)
  return np.clip(noisy, 0, 255).astype(np.uint8)


def _pil_op(name, image, v):
  """The authors' op (their dataset code's functions) in PIL."""
  im = Image.fromarray(image)
  w, h = im.size
  ops = {
    'auto_contrast': lambda: ImageOps.autocontrast(im),
    'brightness': lambda: ImageEnhance.Brightness(im).enhance(v),
    'color': lambda: ImageEnhance.Color(im).enhance(v),
    'contrast': lambda: ImageEnhance.Contrast(im).enhance(v),
    'equalize': lambda: ImageOps.equalize(im),
    'identity': lambda: im,
    'posterize': lambda: ImageOps.posterize(im, max(1, int(v))),
    'rotate': lambda: im.rotate(v),
    'sharpness': lambda: ImageEnhance.Sharpness(im).enhance(v),
    'shear_x': lambda: im.transform(im.size, Image.AFFINE,
                                    (1, v, 0, 0, 1, 0)),
    'shear_y': lambda: im.transform(im.size, Image.AFFINE,
                                    (1, 0, 0, v, 1, 0)),
    'solarize': lambda: ImageOps.solarize(im, v),
    'translate_x': lambda: im.transform(im.size, Image.AFFINE,
                                        (1, 0, v * w, 0, 1, 0)),
    'translate_y': lambda: im.transform(im.size, Image.AFFINE,
                                        (1, 0, 0, 0, 1, v * h)),
  }
  return np.asarray(ops[name]())


@pytest.mark.parametrize('name', OPS)
def test_each_op_matches_pil(name):
  _, lo, hi = dict((n, (n, lo, hi)) for n, lo, hi in
                   augment.RAND_AUGMENT_OPS)[name]
  op = jax.jit(getattr(augment, name))
  worst, differing, compared = 0, 0, 0
  for image in _images(4):
    for u in (0.1, 0.37, 0.5, 0.81):
      v = float(np.float32(lo + (hi - lo) * u))
      want = _pil_op(name, image, v).astype(np.int32)
      got = np.asarray(op(jnp.asarray(image), jnp.float32(v)))
      assert got.dtype == np.uint8 and got.shape == image.shape
      diff = np.abs(got.astype(np.int32) - want)
      worst = max(worst, int(diff.max()))
      differing += int((diff > 0).sum())
      compared += diff.size
  if name in BLENDS:
    assert worst <= 1 and differing <= 0.02 * compared, (worst, differing)
  else:
    assert worst == 0, (name, worst, differing)


def test_ops_change_images_as_their_magnitude_says():
  image = jnp.asarray(_images(1)[0])
  # Identity-like magnitudes leave the image; the others change it.
  np.testing.assert_array_equal(augment.solarize(image, jnp.float32(256.0)),
                                image)
  np.testing.assert_array_equal(augment.rotate(image, jnp.float32(0.0)),
                                image)
  np.testing.assert_array_equal(augment.posterize(image, jnp.float32(8.0)),
                                image)
  np.testing.assert_array_equal(
    augment.solarize(image, jnp.float32(0.0)), 255 - np.asarray(image))
  # Posterize to 4 bits keeps the top four bits only.
  assert np.all(np.asarray(augment.posterize(image, jnp.float32(4.5)))
                % 16 == 0)


def test_cutout_matches_pil_rectangle():
  image = _images(1)[0]
  for size, x0, y0 in ((0.0, 10.0, 10.0), (7.3, 3.2, 30.9), (16.0, 31.5,
                                                               1.0)):
    got = np.asarray(augment.cutout(jnp.asarray(image), jnp.float32(size),
                                    jnp.float32(x0), jnp.float32(y0)))
    im = Image.fromarray(image)
    if size > 0:  # The authors' CutoutAbs with its draws given.
      left, top = int(max(0, x0 - size / 2.0)), int(max(0, y0 - size / 2.0))
      xy = (left, top, min(32, left + size), min(32, top + size))
      im = im.copy()
      ImageDraw.Draw(im).rectangle(xy, augment.CUTOUT_FILL)
    np.testing.assert_array_equal(got, np.asarray(im))


def test_rand_augment_applies_the_drawn_ops_in_order():
  image = jnp.asarray(_images(1)[0])
  ops = {name: k for k, name in enumerate(OPS)}
  params = {  # Example 0: solarize at 128, then rotate by 15 degrees;
    # example 1: equalize, then identity, then a 10-pixel cutout.
    'ops': jnp.asarray([[ops['solarize'], ops['rotate']],
                        [ops['equalize'], ops['identity']]]),
    'values': jnp.asarray([[0.5, 0.75], [0.2, 0.9]], jnp.float32),
    'cutout': jnp.asarray([[0.0, 0.5, 0.5], [0.625, 0.5, 0.25]],
                          jnp.float32),
  }
  got = jax.jit(augment.rand_augment)(jnp.stack([image, image]), params)
  want = augment.rotate(augment.solarize(image, jnp.float32(128.0)),
                        jnp.float32(15.0))
  np.testing.assert_array_equal(got[0], want)
  # The cutout's corner: int(max(0, u' - 5)) with u' = 32 - 31 u.
  want = augment.cutout(augment.equalize(image, jnp.float32(0.0)),
                        jnp.float32(10.0), jnp.float32(16.5),
                        jnp.float32(24.25))
  np.testing.assert_array_equal(got[1], want)
  assert np.any(np.asarray(got[1]) != np.asarray(augment.equalize(
    image, jnp.float32(0.0))))


@pytest.mark.parametrize('channels', [3, 1])
def test_strong_view_shape_dtype_and_keys(channels):
  images = jnp.asarray(_images(16, size=28 if channels == 1 else 32,
                               channels=channels))
  fn = jax.jit(augment.strong_augment)
  a = fn(jax.random.key(0), images)
  assert a.shape == images.shape and a.dtype == jnp.uint8
  np.testing.assert_array_equal(a, fn(jax.random.key(0), images))
  b = fn(jax.random.key(1), images)
  assert not np.array_equal(a, b)
  # Every example has its own draws: no two views are the same image.
  assert not np.array_equal(a[0], a[1])
  assert not np.any(np.all(np.asarray(a) == np.asarray(images),
                           axis=(1, 2, 3)))


def test_strong_view_draws_cover_every_op():
  keys = jax.random.split(jax.random.key(3), 2000)
  params = jax.vmap(augment.rand_augment_params)(keys)
  counts = np.bincount(np.asarray(params['ops']).reshape(-1),
                       minlength=len(OPS))
  assert len(counts) == len(OPS)
  # 4000 draws over 14 ops: about 286 each.
  assert counts.min() > 200 and counts.max() < 380, counts
  values = np.asarray(params['values'])
  assert 0 <= values.min() and values.max() < 1


# --------------------------------------------------------------------------
# Batches with the strong view.

SPLIT = datasets.ArraySplit(
  _images(32), (np.arange(32) % 10).astype(np.int32)
)


def _preprocessing(strong_view):
  return input_pipeline.Preprocessing(
    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_padding=4,
    random_flip=True, strong_view=strong_view,
  )


def _first_batches(cls, strong_view, mesh, n=2):
  train_input = cls(SPLIT, _preprocessing(strong_view), batch_size=16,
                    mesh=mesh)
  batches = train_input.batches(0, jax.random.key(5))
  return [jax.device_get(next(batches)) for _ in range(n)]


def test_the_weak_view_is_unchanged_by_the_strong_one():
  mesh = parallel.create_mesh(8)
  plain = _first_batches(input_pipeline.DeviceResidentInput, False, mesh)
  both = _first_batches(input_pipeline.DeviceResidentInput, True, mesh)
  for a, b in zip(plain, both):
    assert a.extras == {}
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.indices, b.indices)
    strong = b.extras[base.STRONG_IMAGES]
    assert strong.shape == b.images.shape and strong.dtype == np.float32
    assert not np.allclose(strong, b.images)


def test_host_fed_and_resident_strong_views_agree():
  mesh = parallel.create_mesh(8)
  device = _first_batches(input_pipeline.DeviceResidentInput, True, mesh)
  host = _first_batches(input_pipeline.HostFedInput, True, mesh)
  for a, b in zip(device, host):
    np.testing.assert_array_equal(a.extras[base.STRONG_IMAGES],
                                  b.extras[base.STRONG_IMAGES])


def test_streaming_input_refuses_the_strong_view():
  config = test_config.get_config()
  config.method = 'mlkd'
  config.data.pipeline = 'stream'
  with pytest.raises(errors.ConfigError, match="data.pipeline='device'"):
    input_pipeline.create_inputs(config, parallel.create_mesh(1),
                                 strong_view=True)
  with pytest.raises(errors.ConfigError, match='mlkd trains on a weak'):
    validation.validate(config)


def test_a_batch_without_the_strong_view_names_the_inputs_that_make_it():
  config = test_config.get_config()
  config.method = 'mlkd'
  method = distill.create_method(config)
  mesh = parallel.create_mesh(1)
  data = base.DataSpec(10, (32, 32, 3), 32, 2)
  teacher = base.Teacher(
    create_model('resnet8', num_classes=10, rngs=nnx.Rngs(0)), None,
    name='resnet8',
  )
  state, graphdef, tx = train_state.create_train_state(
    config, method, teacher=teacher, data=data, mesh=mesh
  )
  t_graphdef, t_state = train_state.place_teacher(teacher, config, mesh)
  train_step = steps.create_train_step(
    method=method, graphdef=graphdef, teacher_graphdef=t_graphdef, tx=tx,
    data=data, compiler_options=None,
  )
  batch = parallel.replicate(
    input_pipeline.Batch(np.zeros((16, 32, 32, 3), np.float32),
                         np.zeros((16,), np.int32),
                         np.arange(16, dtype=np.int32)), mesh)
  with pytest.raises(errors.ConfigError, match='strong_view=True'):
    train_step(state, batch, t_state)
