"""Mixed precision: bf16 compute with float32 parameters and statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhkd_jax import losses
from mhkd_jax.configs import test as test_config
from mhkd_jax.models import create_model, features, heads, precision
from mhkd_jax.run import errors, validation

# Not in `make test-fast` (bf16 runs beside float32 ones): docs/testing.md.
pytestmark = pytest.mark.slow

NUM_CLASSES = 10


def _pair():
  """The same resnet8 + light heads twice: float32 and bf16 compute."""
  def build():
    model = create_model('resnet8', num_classes=NUM_CLASSES, rngs=nnx.Rngs(0))
    aux = heads.create_heads(
      'light', model, None, num_classes=NUM_CLASSES,
      input_shape=(1, 32, 32, 3), width=16, rngs=nnx.Rngs(1),
    )
    return model, aux

  f32, bf16 = build(), build()
  for module in bf16:
    precision.set_compute_dtype(module, jnp.bfloat16)
  return f32, bf16


def _loss(model, aux, x, y):
  logits, feats = features.forward_with_features(model, x, train=True)
  total = losses.cross_entropy(logits, y)
  for head_logits in aux(feats, train=True).values():
    total = total + losses.cross_entropy(head_logits, y)
  return total, logits


def test_unknown_compute_dtype_names_the_valid_ones():
  config = test_config.get_config()
  config.compute_dtype = 'float16'
  with pytest.raises(errors.ConfigError,
                     match="compute_dtype='float16'.*float32, bfloat16"):
    validation.validate(config)


def test_bfloat16_activations_float32_parameters_and_statistics():
  (model, _), (model_bf16, aux_bf16) = _pair()
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
  # Same parameters: the bf16 forward is the f32 one up to bf16 rounding.
  ref = model(x, train=False)
  out = model_bf16(x, train=False)
  assert out.dtype == jnp.bfloat16
  scale = float(jnp.max(jnp.abs(ref)))
  assert float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref))) < (
    0.05 * scale
  )
  _, feats = features.forward_with_features(model_bf16, x, train=True)
  assert all(f.dtype == jnp.bfloat16 for f in feats.values())
  # Nothing that is saved changes dtype, training mode included.
  for module in (model_bf16, aux_bf16):
    saved = nnx.state(module, (nnx.Param, nnx.BatchStat))
    for leaf in jax.tree.leaves(saved):
      assert leaf.dtype == jnp.float32
  # The running statistics were updated from float32 batch statistics.
  model(x, train=True)
  mean = lambda m: nnx.state(m, nnx.BatchStat)['bn1']['mean'][...]
  np.testing.assert_allclose(mean(model_bf16), mean(model), atol=2e-3)


def test_bfloat16_gradients_follow_the_float32_ones():
  (model, aux), (model_bf16, aux_bf16) = _pair()
  x = jax.random.normal(jax.random.key(1), (16, 32, 32, 3))
  y = jax.random.randint(jax.random.key(2), (16,), 0, NUM_CLASSES)

  def grads(model, aux):
    graphdef, params, rest = nnx.split((model, aux), nnx.Param, ...)

    def loss_fn(params):
      m, a = nnx.merge(graphdef, params, rest, copy=True)
      return _loss(m, a, x, y)[0]

    # One compiled program: the eager op-by-op backward took a minute.
    return jax.jit(jax.value_and_grad(loss_fn))(params)

  loss, g = grads(model, aux)
  loss_bf16, g_bf16 = grads(model_bf16, aux_bf16)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(g_bf16))
  assert abs(float(loss_bf16) - float(loss)) < 0.02 * float(loss)
  flat = jnp.concatenate([l.ravel() for l in jax.tree.leaves(g)])
  flat_bf16 = jnp.concatenate([l.ravel() for l in jax.tree.leaves(g_bf16)])
  cosine = jnp.dot(flat, flat_bf16) / (
    jnp.linalg.norm(flat) * jnp.linalg.norm(flat_bf16)
  )
  assert float(cosine) > 0.99
