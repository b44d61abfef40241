"""A method defined outside the library trains through train_and_evaluate.

The method below lives only in this test: an L2 loss between the student's
pooled features, through a linear regressor, and the teacher's (a FitNet-
like hint), with two pieces of method state: a step counter and a
per-example visit count indexed by the batch's example indices. It
registers itself and declares its config section; no library file knows
it. The run must train it, log its terms, save and restore its state, and
export its student.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from mhkd_jax import distill, losses, train
from mhkd_jax.configs import default
from mhkd_jax.configs import test as test_config
from mhkd_jax.distill import base
from mhkd_jax.models import create_model, features
from mhkd_jax.run import checkpoints

# Not in `make test-fast` (full runs of a method defined here): docs/testing.md.
pytestmark = pytest.mark.slow

NAME = 'pooled_l2_plugin_test'


class PooledL2(base.Method):
  """CE + weight * ||W s_pooled - t_pooled||^2 (mean over all entries)."""

  name = NAME

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({'w_ce': 1.0, 'weight': 0.5})

  def create_trainable(self, teacher, data, rngs):
    student = create_model(
      self.config.model, num_classes=data.num_classes, rngs=rngs
    )
    s_dim = features.feature_shapes(student, data.input_shape)['pooled'][-1]
    t_dim = features.feature_shapes(
      teacher.model, data.input_shape)['pooled'][-1]
    return base.Trainable(
      student=student,
      regressor=nnx.Linear(s_dim, t_dim, rngs=rngs),
      steps_seen=base.MethodState(jnp.zeros((), jnp.int32)),
      visits=base.MethodState(
        jnp.zeros((data.num_train_examples,), jnp.int32)
      ),
      last_epoch=base.MethodState(jnp.full((), -1, jnp.int32)),
    )

  def loss(self, trainable, teacher_out, batch, context):
    logits, feats = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    hint = trainable.regressor(feats['pooled'])
    terms = {
      'ce': losses.cross_entropy(logits, batch.labels),
      'l2/pooled': jnp.mean((hint - teacher_out.feats['pooled']) ** 2),
    }
    trainable.steps_seen[...] = trainable.steps_seen[...] + 1
    trainable.visits[...] = trainable.visits[...].at[batch.indices].add(1)
    trainable.last_epoch[...] = context.epoch
    total = self.cfg.w_ce * terms['ce'] + self.cfg.weight * terms['l2/pooled']
    return total, terms, logits


@pytest.fixture
def plugin(monkeypatch):
  # Registered for this test only; the registry is restored afterwards.
  monkeypatch.setattr(base, '_REGISTRY', dict(base._REGISTRY))
  base.register(PooledL2)
  yield PooledL2


def _saved(workdir, step):
  """The checkpoint of ``step`` as {'part/…/leaf': array}."""
  tree = checkpoints.TrainCheckpointer(
    workdir, max_to_keep=2)._manager.restore(step)
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
    '/'.join(str(getattr(k, 'key', k)) for k in path): np.asarray(v)
    for path, v in flat
  }


def test_method_section_joins_the_default_config(plugin):
  assert NAME in distill.method_names()
  config = default.get_config()
  assert config[NAME].weight == 0.5
  with pytest.raises(AttributeError):
    config[NAME].wieght = 1.0  # locked like every other section


def test_a_method_defined_in_a_test_trains_saves_resumes_and_exports(
  plugin, mock_cifar100, resnet8_teacher_dir, tmp_path, disrupt_train_step
):
  config = test_config.get_config()
  config.method = NAME
  config.teacher.init = resnet8_teacher_dir
  workdir = str(tmp_path)
  # Killed after the checkpoint of step 4, then restarted: the method
  # state must come back from the checkpoint, not start again.

  def kill():
    raise KeyboardInterrupt('killed')

  disrupt_train_step(at_call=6, action=kill)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, workdir)
  disrupt_train_step.restore()
  results = train.train_and_evaluate(config, workdir)

  num_steps = results['num_train_steps']
  assert num_steps == 8  # 64 examples / 16 per batch x 2 epochs
  for key in ('loss', 'ce', 'l2/pooled', 'acc'):
    assert np.isfinite(results['train'][key]), key
  np.testing.assert_allclose(
    results['train']['loss'],
    results['train']['ce'] + 0.5 * results['train']['l2/pooled'], rtol=1e-5,
  )
  assert {'eval/acc', 'eval/teacher_acc', 'eval/agree_top1'} <= set(
    results['final']
  )
  saved = _saved(workdir, num_steps)
  # Method state: updated in the step, checkpointed, restored on resume.
  assert _saved(workdir, num_steps - 2)['buffers/steps_seen/value'] == 6
  assert saved['buffers/steps_seen/value'] == num_steps
  np.testing.assert_array_equal(saved['buffers/visits/value'],
                                np.full((64,), 2))  # each example per epoch
  assert saved['buffers/last_epoch/value'] == 1
  # ... and never given to the optimizer; the regressor is.
  opt_keys = [k for k in saved if k.startswith('opt_state/')]
  assert not any('steps_seen' in k or 'visits' in k for k in opt_keys)
  assert any('regressor' in k for k in opt_keys)
  kernel = saved['params/regressor/kernel/value']
  before = _saved(workdir, num_steps - 2)['params/regressor/kernel/value']
  assert kernel.shape == (64, 64) and not np.allclose(kernel, before)
  # The default export: the student, loadable as a teacher.
  exported = checkpoints.load_teacher(workdir)
  assert exported.name == 'resnet8' and exported.heads is None
