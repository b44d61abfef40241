"""One MHKD train step: values, frozen teacher, sharded == unsharded."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import test as test_config
from mhkd_jax import heads, parallel, step as step_lib, train
from mhkd_jax.distill import get_method
from mhkd_jax.distill.base import Teacher
from mhkd_jax.models import create_model

NUM_CLASSES = 10
NUM_EXAMPLES = 64
INPUT_SPEC = step_lib.InputSpec(
  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_padding=4,
  random_flip=True,
)


def _config(teacher_heads='pretrain'):
  config = test_config.get_config()
  config.method = 'mhkd'
  config.mhkd.teacher_heads = teacher_heads
  return config


def _teacher(config):
  model = create_model('resnet14', num_classes=NUM_CLASSES, rngs=nnx.Rngs(7))
  # Non-trivial running statistics, so that eval mode is distinguishable.
  state = nnx.state(model, nnx.BatchStat)
  key = jax.random.key(3)
  state = jax.tree.map(
    lambda x: x + 0.1 * jax.random.uniform(key, x.shape), state
  )
  nnx.update(model, state)
  teacher_heads = heads.create_heads(
    config.mhkd.head, model, None, num_classes=NUM_CLASSES,
    input_shape=(1, 32, 32, 3), width=config.mhkd.head_width,
    rngs=nnx.Rngs(8),
  )
  return Teacher(model, teacher_heads, name='resnet14')


def _data():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (NUM_EXAMPLES, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, (NUM_EXAMPLES,)).astype(np.int32)
  return images, labels


def _setup(num_devices, teacher_heads='pretrain'):
  """Everything one step needs, on a ('data',) mesh of num_devices."""
  config = _config(teacher_heads)
  method = get_method('mhkd')
  mesh = parallel.create_mesh(num_devices)
  teacher = _teacher(config)
  trainable = method.create_trainable(
    config, teacher=teacher, num_classes=NUM_CLASSES,
    input_shape=(1, 32, 32, 3), rngs=nnx.Rngs(0),
  )
  graphdef, params, rest = step_lib.split_trainable(trainable)
  tx = train.create_optimizer(config, steps_per_epoch=4)
  opt_state = tx.init(params)
  t_graphdef, t_state = nnx.split(teacher)
  images, labels = _data()
  placed = parallel.replicate(
    (params, rest, opt_state, t_state, images, labels), mesh
  )
  train_step = step_lib.create_train_step(
    graphdef=graphdef, teacher_graphdef=t_graphdef, method=method,
    config=config, tx=tx, mesh=mesh, input_spec=INPUT_SPEC,
  )
  return train_step, placed


def _host(tree):
  return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


def _run(num_devices, teacher_heads='pretrain', steps=1):
  train_step, placed = _setup(num_devices, teacher_heads)
  params, rest, opt_state, t_state, images, labels = placed
  before = _host((params, rest, t_state))
  perm = jnp.arange(NUM_EXAMPLES, dtype=jnp.int32)[::-1]
  for i in range(steps):
    params, rest, opt_state, metrics = train_step(
      params, rest, opt_state, t_state, images, labels, perm, jnp.int32(i),
      jax.random.key(i),
    )
  return before, _host((params, rest, t_state)), _host(metrics)


@pytest.fixture(scope='module')
def one_device_run():
  return _run(1)


def test_mhkd_step_loss_finite_and_terms_named(one_device_run):
  _, _, metrics = one_device_run
  assert np.isfinite(metrics['loss'])
  for key in ('ce', 'kd/logits', 'kd/stage1', 'kd/stage2', 'ce/stage1',
              'ce/stage2', 'acc'):
    assert key in metrics and np.isfinite(metrics[key]), key
  # Project defaults: 0.1 CE + 0.9 KD + sum_k 1.0 * (KD_k + 0 * CE_k).
  expected = (0.1 * metrics['ce'] + 0.9 * metrics['kd/logits']
              + metrics['kd/stage1'] + metrics['kd/stage2'])
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-5)


def test_mhkd_step_teacher_and_frozen_heads_bit_identical(one_device_run):
  before, after, _ = one_device_run
  t_before, t_after = before[2], after[2]
  for a, b in zip(jax.tree.leaves(t_before), jax.tree.leaves(t_after)):
    np.testing.assert_array_equal(a, b)


def test_mhkd_step_changes_student_and_student_heads(one_device_run):
  before, after, _ = one_device_run
  p_before, p_after = before[0], after[0]
  for part in ('model', 'heads'):
    leaves_b = jax.tree.leaves(p_before[part])
    leaves_a = jax.tree.leaves(p_after[part])
    changed = [not np.array_equal(a, b) for a, b in zip(leaves_b, leaves_a)]
    # Every parameter gets a gradient or weight decay.
    assert all(changed), part
  # BatchNorm statistics moved too (train mode).
  r_b, r_a = jax.tree.leaves(before[1]), jax.tree.leaves(after[1])
  assert any(not np.array_equal(a, b) for a, b in zip(r_b, r_a))


def test_online_teacher_heads_train_and_teacher_is_unchanged():
  before, after, metrics = _run(1, teacher_heads='online')
  assert 'ce/teacher_head/stage1' in metrics
  for a, b in zip(jax.tree.leaves(before[2]), jax.tree.leaves(after[2])):
    np.testing.assert_array_equal(a, b)
  t_heads_b = jax.tree.leaves(before[0]['teacher_heads'])
  t_heads_a = jax.tree.leaves(after[0]['teacher_heads'])
  assert all(not np.array_equal(a, b) for a, b in zip(t_heads_b, t_heads_a))


def test_eight_devices_equal_one_device(one_device_run):
  assert jax.device_count() == 8, 'conftest must force 8 CPU devices'
  _, after_1, metrics_1 = one_device_run
  _, after_8, metrics_8 = _run(8)
  for key in metrics_1:
    np.testing.assert_allclose(metrics_8[key], metrics_1[key], atol=1e-5,
                               err_msg=key)
  leaves_1 = jax.tree.leaves(after_1[:2])
  leaves_8 = jax.tree.leaves(after_8[:2])
  for a, b in zip(leaves_1, leaves_8):
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_learning_rate_follows_repdistiller_epochs():
  config = ml_collections.ConfigDict(
    {'num_epochs': 240, 'lr_decay_fractions': (0.625, 0.75, 0.875),
     'learning_rate': 0.05, 'lr_decay_rate': 0.1}
  )
  assert train.lr_decay_epochs(config) == (150, 180, 210)
  steps_per_epoch = 3
  lr = train.create_learning_rate_fn(config, steps_per_epoch)

  def repdistiller(epoch):  # adjust_learning_rate, 1-based epoch
    return 0.05 * 0.1 ** sum(epoch > np.array([150, 180, 210]))

  for epoch in range(1, 241):
    for i in range(steps_per_epoch):
      step = (epoch - 1) * steps_per_epoch + i
      assert float(lr(step)) == pytest.approx(repdistiller(epoch), rel=1e-6)


def test_eval_reads_cached_frozen_teacher_outputs_like_running_it():
  config = _config('pretrain')
  config.eval_batch_size = 16
  mesh = parallel.create_mesh(8)
  teacher = _teacher(config)
  trainable = get_method('mhkd').create_trainable(
    config, teacher=teacher, num_classes=NUM_CLASSES,
    input_shape=(1, 32, 32, 3), rngs=nnx.Rngs(0),
  )
  graphdef, params, rest = step_lib.split_trainable(trainable)
  t_graphdef, t_state = nnx.split(teacher)
  images, labels = _data()
  mask = np.ones((NUM_EXAMPLES,), bool)
  mask[-5:] = False  # padding rows must not count either way
  params, rest, t_state, images_d, labels_d, mask_d = parallel.replicate(
    (params, rest, t_state, images, labels, mask), mesh
  )
  eval_step = step_lib.create_eval_step(
    graphdef=graphdef, teacher_graphdef=t_graphdef, config=config,
    mesh=mesh, input_spec=INPUT_SPEC,
    head_pairs=(('stage1', 'stage1'), ('stage2', 'stage2')),
  )
  teacher_eval_step = step_lib.create_teacher_eval_step(
    teacher_graphdef=t_graphdef, config=config, mesh=mesh,
    input_spec=INPUT_SPEC,
  )
  num_batches = NUM_EXAMPLES // config.eval_batch_size
  cached = train.frozen_teacher_logits(
    teacher_eval_step, t_state, images_d, num_batches, mesh
  )
  assert sorted(cached) == [
    'teacher_acc', 'teacher_acc/stage1', 'teacher_acc/stage2'
  ]
  # Row i is the teacher's eval-mode output on example i.
  x = (images.astype(np.float32) / 255.0 - 0.5) / 0.25
  np.testing.assert_allclose(
    np.asarray(cached['teacher_acc']),
    np.asarray(teacher.model(jnp.asarray(x), train=False)),
    rtol=1e-5, atol=1e-5,
  )
  arrays = (images_d, labels_d, mask_d)
  running = train.evaluate(
    eval_step, params, rest, t_state, None, arrays, num_batches
  )
  reading = train.evaluate(
    eval_step, params, rest, t_state, cached, arrays, num_batches
  )
  assert reading == running
  for key in ('eval/teacher_acc/stage1', 'eval/agree_top1',
              'eval/agree_top1/stage2', 'eval/acc/stage1'):
    assert key in reading
