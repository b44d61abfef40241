"""Mixed precision: bf16 compute with float32 parameters and statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhkd_jax import losses, parallel, train_state
from mhkd_jax.configs import test as test_config
from mhkd_jax.distill import base
from mhkd_jax.models import create_model, features, heads, layers, precision
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
  # Logits are float32 (the classifier computes in float32).
  assert out.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(ref)))
  assert float(jnp.max(jnp.abs(out - ref))) < 0.05 * scale
  # Stage maps are bf16 activations; the pooled vector is float32.
  _, feats = features.forward_with_features(model_bf16, x, train=True)
  assert {k: str(f.dtype) for k, f in feats.items()} == {
    **{k: 'bfloat16' for k in feats if k != 'pooled'}, 'pooled': 'float32'
  }
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


def test_the_precision_rule_per_layer():
  model = create_model('resnet8', num_classes=NUM_CLASSES, rngs=nnx.Rngs(0))
  regressor = layers.TransposedConv(4, 8, 4, stride=2, padding=1,
                                    rngs=nnx.Rngs(0))
  precision.set_compute_dtype(model, jnp.bfloat16)
  precision.set_compute_dtype(regressor, jnp.bfloat16)
  assert model.conv1.dtype == jnp.bfloat16
  assert regressor.dtype == jnp.bfloat16
  assert model.bn1.dtype == jnp.float32
  assert model.fc.dtype == jnp.float32
  # The transposed conv takes a bf16 map with float32 weights (FitNet's
  # half-size regressor and FT's paraphraser once raised a TypeError).
  y = regressor(jnp.ones((2, 4, 4, 4), jnp.bfloat16))
  assert y.shape == (2, 8, 8, 8) and y.dtype == jnp.bfloat16
  # A layer with a compute dtype that the rule does not know is refused.
  with pytest.raises(TypeError, match='IN_COMPUTE_DTYPE or IN_FLOAT32'):
    precision.set_compute_dtype(nnx.LayerNorm(4, rngs=nnx.Rngs(0)),
                                jnp.bfloat16)


def test_eval_batchnorm_normalises_with_float32_statistics():
  # Running statistics that bf16 cannot hold: a mean of 1000.1 rounds to
  # 1000 in bf16, which would shift every normalised value by 1 (std 0.1).
  bn = layers.batch_norm(3, rngs=nnx.Rngs(0))
  bn.mean[...] = jnp.full((3,), 1000.1)
  bn.var[...] = jnp.full((3,), 0.01)
  precision.set_compute_dtype(bn, jnp.bfloat16)
  x = jnp.full((2, 3), 1000.1, jnp.float32)
  y = bn(x.astype(jnp.bfloat16), use_running_average=True)
  assert y.dtype == jnp.bfloat16
  # The bf16 input itself rounds 1000.1 to 1000: (1000 - 1000.1) / 0.1.
  np.testing.assert_allclose(np.asarray(y, np.float32), -1.0, atol=0.02)
  # Flax's own BatchNorm at bf16 casts the statistics first.
  plain = nnx.BatchNorm(3, epsilon=1e-5, dtype=jnp.bfloat16,
                        rngs=nnx.Rngs(0))
  plain.mean[...], plain.var[...] = bn.mean[...], bn.var[...]
  off = plain(x.astype(jnp.bfloat16), use_running_average=True)
  assert abs(float(off[0, 0]) + 1.0) > 0.5


def test_frozen_teacher_weights_are_stored_once_in_the_compute_dtype():
  config = test_config.get_config()
  config.compute_dtype = 'bfloat16'
  model = create_model('resnet8', num_classes=NUM_CLASSES, rngs=nnx.Rngs(0))
  teacher = base.Teacher(model, name='resnet8')
  mesh = parallel.create_mesh()
  graphdef, state = train_state.place_teacher(teacher, config, mesh)
  placed = nnx.merge(graphdef, state)
  assert placed.model.conv1.kernel[...].dtype == jnp.bfloat16
  assert placed.model.bn1.scale[...].dtype == jnp.float32
  assert placed.model.bn1.mean[...].dtype == jnp.float32
  assert placed.model.fc.kernel[...].dtype == jnp.float32
  # The loaded teacher (read by methods, exported by fit_teacher_heads)
  # keeps float32 weights and its dtypes.
  assert model.conv1.kernel[...].dtype == jnp.float32
  assert model.conv1.dtype is None
  # A float32 run stores exactly the loaded weights.
  config.compute_dtype = 'float32'
  _, state32 = train_state.place_teacher(teacher, config, mesh)
  loaded = jax.tree.leaves(nnx.state(teacher))
  for a, b in zip(jax.tree.leaves(state32), loaded):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_losses_compute_in_float32():
  f = jax.random.normal(jax.random.key(3), (8, 4, 4, 16))
  g = jax.random.normal(jax.random.key(4), (8, 4, 4, 16))
  low = losses.float32((f.astype(jnp.bfloat16), g.astype(jnp.bfloat16)))
  # The helper casts the bf16 maps up and leaves labels alone.
  assert all(x.dtype == jnp.float32 for x in low)
  labels = jnp.arange(8)
  assert losses.float32(labels).dtype == labels.dtype
  # A loss on bf16 inputs equals the same loss on their float32 values.
  got = losses.similarity_loss(*(x.astype(jnp.bfloat16) for x in (f, g)))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, losses.similarity_loss(*low), rtol=1e-6)
