"""Features collected by forward_with_features, and the auxiliary heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhkd_jax.models import create_model, features, heads


def _params(module):
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.fixture(scope='module')
def resnet8x4():
  return create_model('resnet8x4', num_classes=100, rngs=nnx.Rngs(0))


def test_forward_with_features_names_shapes_and_logits(resnet8x4):
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  logits, feats = features.forward_with_features(resnet8x4, x, train=False)
  assert set(feats) == {'stem', 'stage1', 'stage2', 'stage3', 'pooled',
                        'preact1', 'preact2', 'preact3'}
  assert feats['stage1'].shape == (2, 32, 32, 64)
  # A stage output is its last block's pre-activation through the ReLU.
  for k in (1, 2, 3):
    np.testing.assert_array_equal(
      np.maximum(feats[f'preact{k}'], 0), feats[f'stage{k}']
    )
  assert feats['stage3'].shape == (2, 8, 8, 256)
  # The pooled vector is what the classifier sees.
  np.testing.assert_allclose(
    logits, resnet8x4.fc(feats['pooled']), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    feats['pooled'], feats['stage3'].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6
  )
  # Capturing changes nothing: a plain call gives the same logits.
  np.testing.assert_allclose(logits, resnet8x4(x), rtol=1e-6)
  assert features.stage_names(feats) == ('stage1', 'stage2', 'stage3')


def test_default_stages_are_all_but_the_last(resnet8x4):
  h = heads.create_heads('dih', resnet8x4, None, num_classes=100,
                         input_shape=(1, 32, 32, 3), rngs=nnx.Rngs(1))
  assert h.spec.stages == ('stage1', 'stage2')


@pytest.mark.parametrize('kind', heads.HEAD_KINDS)
def test_heads_read_channels_from_the_model(kind, resnet8x4):
  h = heads.create_heads(kind, resnet8x4, ('stage1', 'stage3'),
                         num_classes=7, input_shape=(1, 32, 32, 3),
                         rngs=nnx.Rngs(1))
  _, feats = features.forward_with_features(
    resnet8x4, jnp.ones((3, 32, 32, 3)), train=False
  )
  out = h(feats, train=False)
  assert set(out) == {'stage1', 'stage3'}
  assert all(v.shape == (3, 7) for v in out.values())


def test_dih_head_parameter_count_and_cost(resnet8x4):
  h = heads.create_heads('dih', resnet8x4, ('stage1',), num_classes=100,
                         input_shape=(1, 32, 32, 3), rngs=nnx.Rngs(1))
  c, w, k = 64, 256, 100
  expected = (9 * c * w + 2 * w + 9 * w * w + 2 * w + w * w + w + w * k + k)
  assert _params(h) == expected
  feats = {'stage1': jnp.ones((1, 32, 32, 64))}
  cost = jax.jit(lambda f: h(f, train=False)).lower(feats).compile()
  analysis = cost.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  # docs/methods.md: 595 MMACs per image on a 64x32x32 stage.
  macs = (30 * 30 * 9 * c * w + 28 * 28 * 9 * w * w + w * w + w * k)
  assert macs / 1e6 == pytest.approx(595, abs=1)
  assert analysis['flops'] / 2 == pytest.approx(macs, rel=0.02)


def test_unknown_head_kind_and_stage(resnet8x4):
  with pytest.raises(ValueError, match="Unknown head kind 'big'"):
    heads.create_heads('big', resnet8x4, None, num_classes=10,
                       input_shape=(1, 32, 32, 3), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='has stages'):
    heads.create_heads('dih', resnet8x4, ('stage7',), num_classes=10,
                       input_shape=(1, 32, 32, 3), rngs=nnx.Rngs(0))
