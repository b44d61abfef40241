"""Folding the frozen teacher's BatchNorms keeps every output it gives."""

import jax
import numpy as np
import pytest
from flax import nnx

from mhkd_jax.models import MODEL_NAMES, create_model, features, fold

# Not in `make test-fast` (every zoo model, eagerly): docs/testing.md.
pytestmark = pytest.mark.slow


def _input_shape(name):
  # ImageNet ResNets at 64x64: the same layers, a cheaper test.
  return (2, 64, 64, 3) if 'imagenet' in name else (2, 32, 32, 3)


def _batch_norms(model):
  return [n for _, n in nnx.iter_graph(model) if isinstance(n, nnx.BatchNorm)]


def _model_with_running_stats(name):
  """The model with BatchNorm statistics and affine parameters far from
  their initial values, so that a folding that ignored one would show."""
  model = create_model(name, num_classes=10, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  for bn in _batch_norms(model):
    c = bn.mean.shape
    bn.mean[...] = rng.normal(0, 0.1, c).astype(np.float32)
    bn.var[...] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bn.scale[...] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bn.bias[...] = rng.normal(0, 0.1, c).astype(np.float32)
  return model


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_folded_logits_and_features_equal_unfolded(name):
  model = _model_with_running_stats(name)
  shape = _input_shape(name)
  x = jax.random.normal(jax.random.key(2), shape)
  logits, feats = features.forward_with_features(model, x, train=False)
  num_bn = len(_batch_norms(model))
  folded = fold.fold_batchnorm(model, (1, *shape[1:]))
  # BatchNorms after a convolution go (in pre-activation WRNs about half
  # of them); the rest stay.
  assert 0 < folded <= num_bn
  assert len(_batch_norms(model)) == num_bn - folded
  f_logits, f_feats = features.forward_with_features(model, x, train=False)
  scale = np.max(np.abs(logits))
  np.testing.assert_allclose(f_logits, logits, rtol=1e-5, atol=1e-5 * scale)
  # Every sown feature, stage outputs and pre-activations (preact1..N)
  # alike, keeps its value.
  assert sorted(f_feats) == sorted(feats)
  for key in feats:
    scale = np.max(np.abs(feats[key]))
    np.testing.assert_allclose(f_feats[key], feats[key], rtol=1e-5,
                               atol=1e-5 * scale, err_msg=key)


def test_folded_teacher_is_a_copy_and_leaves_the_loaded_teacher_whole():
  """The steps run a folded copy; the loaded teacher keeps every BatchNorm
  and value (fit_teacher_heads exports it, methods read it at setup)."""
  from mhkd_jax.distill.base import Teacher  # noqa: PLC0415

  model = _model_with_running_stats('resnet8')
  teacher = Teacher(model, None, name='resnet8')
  def values(module):
    state = nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))
    return {path: np.array(v.get_value())
            for path, v in nnx.to_flat_state(state)}

  before = values(teacher)
  num_bn = len(_batch_norms(model))
  x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
  logits = model(x, train=False)

  copy = fold.folded_teacher(teacher, (1, 32, 32, 3))

  assert len(_batch_norms(teacher.model)) == num_bn
  after = values(teacher)
  assert after.keys() == before.keys()
  for path in before:
    np.testing.assert_array_equal(after[path], before[path], err_msg=path)
  assert len(_batch_norms(copy.model)) < num_bn
  assert copy.name == 'resnet8'
  np.testing.assert_allclose(
    copy.model(x, train=False), logits, rtol=1e-5,
    atol=1e-5 * float(np.max(np.abs(logits))),
  )
