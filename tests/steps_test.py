"""One MHKD train step: values, frozen teacher, sharded == unsharded; eval."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from mhkd_jax import distill, parallel, steps, train, train_state
from mhkd_jax.configs import test as test_config
from mhkd_jax.data import datasets, input_pipeline
from mhkd_jax.distill.base import DataSpec, Teacher
from mhkd_jax.models import create_model, heads

NUM_CLASSES = 10
NUM_EXAMPLES = 64
BATCH = 16
PREPROCESSING = input_pipeline.Preprocessing(
  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_padding=4,
  random_flip=True,
)
DATA = DataSpec(
  num_classes=NUM_CLASSES, example_shape=(32, 32, 3),
  num_train_examples=NUM_EXAMPLES, steps_per_epoch=NUM_EXAMPLES // BATCH,
)


def _config(mode='pretrain'):
  config = test_config.get_config()
  config.method = 'mhkd'
  config.batch_size = BATCH
  config.mhkd.teacher_head_mode = mode
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


def _split():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (NUM_EXAMPLES, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, (NUM_EXAMPLES,)).astype(np.int32)
  return datasets.ArraySplit(images, labels)


def _setup(num_devices, mode='pretrain'):
  """Everything one step needs, on a ('data',) mesh of num_devices."""
  config = _config(mode)
  method = distill.create_method(config)
  mesh = parallel.create_mesh(num_devices)
  teacher = _teacher(config)
  state, graphdef, tx = train_state.create_train_state(
    config, method, teacher=teacher, data=DATA, mesh=mesh
  )
  t_graphdef, t_state = train_state.place_teacher(teacher, config, mesh)
  train_step = steps.create_train_step(
    method=method, graphdef=graphdef, teacher_graphdef=t_graphdef, tx=tx,
    data=DATA, compiler_options=steps.compiler_options(mesh),
    state_sharding=steps.state_shardings(state),  # as the loop has it
  )
  train_input = input_pipeline.DeviceResidentInput(
    _split(), PREPROCESSING, batch_size=BATCH, mesh=mesh
  )
  return train_step, train_input, state, t_state


def _host(tree):
  return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


def _run(num_devices, mode='pretrain', num_steps=1):
  train_step, train_input, state, t_state = _setup(num_devices, mode)
  before = _host((state, t_state))
  batches = train_input.batches(0, jax.random.key(0))
  for _, batch in zip(range(num_steps), batches):
    state, metrics = train_step(state, batch, t_state)
  return before, _host((state, t_state)), _host(metrics)


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
  t_before, t_after = before[1], after[1]
  for a, b in zip(jax.tree.leaves(t_before), jax.tree.leaves(t_after)):
    np.testing.assert_array_equal(a, b)


def test_mhkd_step_changes_student_and_student_heads(one_device_run):
  before, after, _ = one_device_run
  p_before, p_after = before[0].params, after[0].params
  for part in ('student', 'heads'):
    leaves_b = jax.tree.leaves(p_before[part])
    leaves_a = jax.tree.leaves(p_after[part])
    changed = [not np.array_equal(a, b) for a, b in zip(leaves_b, leaves_a)]
    # Every parameter gets a gradient or weight decay.
    assert all(changed), part
  # BatchNorm statistics moved too (train mode), and the step was counted.
  r_b = jax.tree.leaves(before[0].buffers)
  r_a = jax.tree.leaves(after[0].buffers)
  assert any(not np.array_equal(a, b) for a, b in zip(r_b, r_a))
  assert int(before[0].step) == 0 and int(after[0].step) == 1
  np.testing.assert_array_equal(before[0].rng, after[0].rng)


def test_online_teacher_heads_train_and_teacher_is_unchanged():
  before, after, metrics = _run(1, mode='online')
  assert 'ce/teacher_head/stage1' in metrics
  for a, b in zip(jax.tree.leaves(before[1]), jax.tree.leaves(after[1])):
    np.testing.assert_array_equal(a, b)
  t_heads_b = jax.tree.leaves(before[0].params['teacher_heads'])
  t_heads_a = jax.tree.leaves(after[0].params['teacher_heads'])
  assert all(not np.array_equal(a, b) for a, b in zip(t_heads_b, t_heads_a))


def test_eight_devices_equal_one_device(one_device_run):
  assert jax.device_count() == 8, 'conftest must force 8 CPU devices'
  _, after_1, metrics_1 = one_device_run
  _, after_8, metrics_8 = _run(8)
  for key in metrics_1:
    np.testing.assert_allclose(metrics_8[key], metrics_1[key], atol=1e-5,
                               err_msg=key)
  leaves_1 = jax.tree.leaves(after_1[0])
  leaves_8 = jax.tree.leaves(after_8[0])
  assert len(leaves_1) == len(leaves_8)
  for a, b in zip(leaves_1, leaves_8):
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_the_new_state_keeps_the_state_shardings_on_eight_devices():
  train_step, train_input, state, t_state = _setup(8)
  shardings = steps.state_shardings(state)
  batch = next(train_input.batches(0, jax.random.key(0)))
  new_state, metrics = train_step(state, batch, t_state)
  assert jax.tree.structure(steps.state_shardings(new_state)) == (
    jax.tree.structure(shardings))
  for got, want in zip(jax.tree.leaves(steps.state_shardings(new_state)),
                       jax.tree.leaves(shardings)):
    assert got == want
  for x in jax.tree.leaves(metrics):
    assert x.sharding.is_fully_replicated
    assert x.sharding.mesh == shardings.step.mesh


def test_learning_rate_follows_repdistiller_epochs():
  config = ml_collections.ConfigDict(
    {'num_epochs': 240, 'lr_decay_fractions': (0.625, 0.75, 0.875),
     'learning_rate': 0.05, 'lr_decay_rate': 0.1}
  )
  assert train_state.lr_decay_epochs(config) == (150, 180, 210)
  steps_per_epoch = 3
  lr = train_state.create_learning_rate_fn(config, steps_per_epoch)

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
  method = distill.create_method(config)
  teacher = _teacher(config)
  state, graphdef, _ = train_state.create_train_state(
    config, method, teacher=teacher, data=DATA, mesh=mesh
  )
  t_graphdef, t_state = train_state.place_teacher(teacher, config, mesh)
  split = _split()
  # 59 examples: the last batch has 5 padding rows, which must not count.
  split = datasets.ArraySplit(split.images[:59], split.labels[:59])
  eval_input = input_pipeline.DeviceResidentEvalInput(
    split, PREPROCESSING, batch_size=16, mesh=mesh
  )
  options = steps.compiler_options(mesh)
  evaluator = train.Evaluator(method, graphdef, t_graphdef, t_state,
                              eval_input, options)
  cached = evaluator._teacher_logits  # pylint: disable=protected-access
  assert len(cached) == eval_input.num_batches == 4
  assert sorted(cached[0]) == ['teacher', 'teacher/stage1', 'teacher/stage2']
  # Row i is the teacher's eval-mode output on example i.
  x = (split.images.astype(np.float32) / 255.0 - 0.5) / 0.25
  np.testing.assert_allclose(
    np.concatenate([np.asarray(c['teacher']) for c in cached])[:59],
    np.asarray(teacher.model(jnp.asarray(x), train=False)),
    rtol=1e-5, atol=1e-5,
  )
  reading = evaluator(state)
  # The same eval step, running the teacher on every batch instead.
  eval_step = steps.create_eval_step(
    method=method, graphdef=graphdef, teacher_graphdef=t_graphdef,
    compiler_options=options,
  )
  sums = [eval_step(state, t_state, b, None) for b in eval_input.batches()]
  sums = jax.device_get(jax.tree.map(lambda *xs: sum(xs), *sums))
  assert float(sums['count']) == 59
  running = {f'eval/{k}': float(v) / 59 for k, v in sums.items()
             if k != 'count'}
  assert reading == running
  for key in ('eval/teacher_acc/stage1', 'eval/agree_top1',
              'eval/agree_top1/stage2', 'eval/acc/stage1', 'eval/loss'):
    assert key in reading
