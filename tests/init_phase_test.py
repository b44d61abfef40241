"""AB's and FSP's init phases train exactly RepDistiller's
``get_feat_modules()``.

RepDistiller's ``helper/pretrain.py::init`` puts the student in eval mode,
puts only ``model_s.get_feat_modules()`` (and AB's connectors) back in
train mode and gives only those to its optimizer. So after an init-phase
step, per model family: every parameter and every BatchNorm statistic
outside those layers is bit-identical to its initial value (no update, no
weight decay, no running-statistics update), and every one inside moved.
The teacher is a second network of the student's architecture, so that
AB's connectors are identities and FSP's channel counts agree.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from mhkd_jax import distill, models, parallel, steps, train_state
from mhkd_jax.configs import test as test_config
from mhkd_jax.data import input_pipeline
from mhkd_jax.distill import common
from mhkd_jax.distill.base import DataSpec, Teacher
from mhkd_jax.models import features, layers

NUM_CLASSES, BATCH = 10, 4

# One model per family, and the top-level layers get_feat_modules() leaves
# out (read from RepDistiller's models/*.py).
FAMILIES = {
  'resnet8': ('fc',),
  'ResNet50': ('linear',),
  'wrn_16_2': ('bn1', 'fc'),
  'vgg8': ('classifier',),
  'MobileNetV2': ('conv2', 'classifier'),
  'ShuffleV1': ('linear',),
  'ShuffleV2': ('conv2', 'bn2', 'linear'),
}


def _flat(module) -> dict[str, np.ndarray]:
  return {'/'.join(map(str, p)): np.array(v.get_value())
          for p, v in nnx.to_flat_state(nnx.state(module))}


def _one_step(method_name, model_name):
  config = test_config.get_config()
  config.method = method_name
  config.model = model_name
  config.batch_size = BATCH
  data = DataSpec(NUM_CLASSES, (32, 32, 3), 2 * BATCH, 2,
                  np.arange(2 * BATCH) % NUM_CLASSES)
  method = distill.create_method(config)
  teacher = Teacher(
    models.create_model(model_name, num_classes=NUM_CLASSES,
                        rngs=nnx.Rngs(7)), None, name=model_name)
  trainable = method.create_trainable(teacher, data, nnx.Rngs(0))
  before = _flat(trainable.student)
  mesh = parallel.create_mesh(1)
  state, graphdef, tx = train_state.train_state_for(
    trainable, config, steps_per_epoch=2, mesh=mesh,
    trained=method.trained_parameters())
  t_graphdef, t_state = train_state.place_teacher(teacher, config, mesh)
  train_step = steps.create_train_step(
    method=method, graphdef=graphdef, teacher_graphdef=t_graphdef, tx=tx,
    data=data, compiler_options=steps.compiler_options(mesh))
  rng = np.random.default_rng(0)
  batch = parallel.replicate(input_pipeline.Batch(
    rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32),
    np.arange(BATCH, dtype=np.int32) % NUM_CLASSES,
    np.arange(BATCH, dtype=np.int32)), mesh)
  state, metrics = train_step(state, batch, t_state)
  assert np.isfinite(float(metrics['loss']))
  after = _flat(nnx.merge(graphdef, state.params, state.buffers).student)
  return before, after


def _check(before, after, model_name):
  outside = FAMILIES[model_name]
  feat = models.feature_modules(model_name)
  for path in before:
    top = path.split('/')[0]
    assert (top in feat) != (top in outside), path
    same = np.array_equal(before[path], after[path])
    if top in outside:
      assert same, f'{model_name}: {path} outside get_feat_modules() changed'
    else:
      assert not same, f'{model_name}: {path} in get_feat_modules() did not'
  # The layers left out are really there (a typo would pass vacuously).
  assert all(any(p.split('/')[0] == top for p in before) for top in outside)


# Every family in the full tier; in the fast tier the one with a left-out
# BatchNorm that AB's last pre-activation goes through (WRN) and a plain
# one (the larger families take 10-20 s each on CPU).
FAMILY_PARAMS = [
  pytest.param(name, marks=() if name in ('wrn_16_2', 'resnet8')
               else pytest.mark.slow) for name in sorted(FAMILIES)]


@pytest.mark.parametrize('model_name', FAMILY_PARAMS)
def test_fsp_init_trains_feature_modules_only(model_name):
  _check(*_one_step('fsp_init', model_name), model_name)


@pytest.mark.parametrize('model_name', FAMILY_PARAMS)
def test_ab_init_trains_feature_modules_only(model_name):
  _check(*_one_step('ab_init', model_name), model_name)


def test_wrn_last_preactivation_uses_the_initial_bn1_in_the_init_phase():
  """RepDistiller's AB init takes WRN's third pre-activation after the
  final ``bn1`` in eval mode: at its initial statistics (mean 0, variance
  1), i.e. the stage output over sqrt(1 + eps), and batch statistics
  elsewhere."""
  model = models.create_model('wrn_16_2', num_classes=NUM_CLASSES,
                              rngs=nnx.Rngs(0))
  common.hold_outside_features(model, 'wrn_16_2')
  assert model.bn1.eval_only and not model.block3.layer[0].bn1.eval_only
  x = jax.random.normal(jax.random.key(1), (BATCH, 32, 32, 3))
  _, feats = features.forward_with_features(model, x, train=True)
  np.testing.assert_allclose(feats['preact3'],
                             feats['stage3'] / np.sqrt(1 + 1e-5),
                             rtol=1e-6, atol=1e-6)
  # The second group's pre-activation is a feature layer's: batch stats.
  mean = np.asarray(feats['preact2']).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(mean, model.block3.layer[0].bn1.bias[...],
                             atol=1e-4)


def test_eval_only_batch_norm_ignores_train_mode():
  bn = layers.batch_norm(3, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (8, 3)) * 3 + 1
  bn.eval_only = True
  np.testing.assert_allclose(bn(x, use_running_average=False),
                             x / np.sqrt(1 + 1e-5), rtol=1e-6)
  np.testing.assert_array_equal(bn.mean[...], np.zeros(3))
