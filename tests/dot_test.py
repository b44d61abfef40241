"""DOT (``mhkd_jax.dot``): the optax transformation against a PyTorch port
of mdistiller's optimizer, the gradient masks, DOT's train step, and the
SGD path left as it was."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mhkd_jax import distill, dot, losses, parallel, steps, train_state
from mhkd_jax.configs import test as test_config
from mhkd_jax.data import input_pipeline
from mhkd_jax.distill.base import DataSpec, Teacher
from mhkd_jax.models import create_model

NUM_CLASSES = 10
BATCH = 16
DATA = DataSpec(
  num_classes=NUM_CLASSES, example_shape=(32, 32, 3),
  num_train_examples=4 * BATCH, steps_per_epoch=4,
)

# Parameter name -> (gets a task gradient, gets a distillation gradient).
KINDS = {
  'both': (True, True), 'task_only': (True, False),
  'kd_only': (False, True), 'neither': (False, False),
}
SHAPES = {'both': (3, 4), 'task_only': (5,), 'kd_only': (2, 3),
          'neither': (4,)}


def _schedule_config():
  """A rate that decays after 4 of 8 steps (2 steps per epoch)."""
  config = test_config.get_config()
  config.num_epochs = 4
  config.lr_decay_fractions = (0.5,)
  config.optimizer.name = 'dot'
  config.optimizer.dot_delta = 0.075
  return config


def test_dot_transformation_matches_mdistiller_optimizer():
  torch = pytest.importorskip('torch')
  from tests.torch_reference import dot as torch_dot  # noqa: PLC0415

  config = _schedule_config()
  steps_per_epoch, num_steps = 2, 8
  tx = train_state.create_optimizer(config, steps_per_epoch)
  lr_fn = train_state.create_learning_rate_fn(config, steps_per_epoch)
  m_task, m_kd = dot.momenta(config.momentum, config.optimizer.dot_delta)
  assert (m_task, m_kd) == pytest.approx((0.825, 0.975))

  rng = np.random.default_rng(0)
  w0 = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
  t_params = {k: torch.nn.Parameter(torch.from_numpy(v.copy()))
              for k, v in w0.items()}
  opt = torch_dot.DistillationOrientedSGD(
    list(t_params.values()), lr=config.learning_rate, momentum=m_task,
    momentum_kd=m_kd, weight_decay=config.weight_decay,
  )
  task_mask = {k: t for k, (t, _) in KINDS.items()}
  kd_mask = {k: d for k, (_, d) in KINDS.items()}
  params = jax.tree.map(jnp.asarray, w0)
  state = tx.init(params)

  @jax.jit
  def update(params, state, g_task, g_kd):
    updates, state = tx.update(g_task, state, params, kd_updates=g_kd,
                               task_mask=task_mask, kd_mask=kd_mask)
    return optax.apply_updates(params, updates), state

  worst = 0.0
  for step in range(num_steps):
    for group in opt.param_groups:
      group['lr'] = float(lr_fn(step))
    g_task = {k: rng.normal(size=s).astype(np.float32)
              for k, s in SHAPES.items()}
    g_kd = {k: rng.normal(size=s).astype(np.float32)
            for k, s in SHAPES.items()}
    # mdistiller's trainer: the distillation backward, step_kd, the task
    # backward, step; grads of parameters a loss does not reach are None.
    for k, p in t_params.items():
      p.grad = torch.from_numpy(g_kd[k].copy()) if kd_mask[k] else None
    opt.step_kd()
    for k, p in t_params.items():
      p.grad = torch.from_numpy(g_task[k].copy()) if task_mask[k] else None
    opt.step()
    params, state = update(params, state, g_task, g_kd)
    for k, p in t_params.items():
      want = p.detach().numpy()
      diff = np.max(np.abs(np.asarray(params[k]) - want))
      worst = max(worst, float(diff / np.max(np.abs(want))))
  assert worst <= 1e-6, worst
  # A parameter no loss reaches is never touched (no weight decay).
  np.testing.assert_array_equal(np.asarray(params['neither']), w0['neither'])
  for k in ('both', 'task_only', 'kd_only'):
    assert not np.allclose(np.asarray(params[k]), w0[k])
  assert int(state.count) == num_steps
  print(f'\n[dot] optax vs mdistiller optimizer, {num_steps} steps: '
        f'max param rel diff {worst:.2e}')


def test_first_distillation_step_of_a_distillation_only_leaf_skips_decay():
  """mdistiller starts a distillation-only buffer at the bare gradient and
  decays the parameter from the second step on."""
  tx = dot.dot(0.1, momentum=0.8, momentum_kd=1.0, weight_decay=0.5)
  w = {'a': jnp.array([2.0])}
  g = {'a': jnp.array([1.0])}
  zero = {'a': jnp.zeros(1)}
  masks = dict(task_mask={'a': False}, kd_mask={'a': True})
  state = tx.init(w)
  u1, state = tx.update(zero, state, w, kd_updates=g, **masks)
  np.testing.assert_allclose(u1['a'], [-0.1])  # -lr * g: no decay
  u2, state = tx.update(zero, state, w, kd_updates=g, **masks)
  # mean momentum 0.9: 0.9 * 1 + (1 + 0.5 * 2) = 2.9.
  np.testing.assert_allclose(u2['a'], [-0.29], rtol=1e-6)


def test_gradient_masks_of_a_loop_take_every_carry():
  """A scan's carry depends on every carry after two iterations, which one
  pass of its body would miss."""
  def losses_fn(p):
    def body(carry, _):
      a, b = carry
      return (b, a * 2.0), None

    (a, _), _ = jax.lax.scan(body, (p['a'], p['b']), None, length=2)
    ce = jnp.sum(p['c'])
    return ce + jnp.sum(a), ce

  params = {k: jnp.ones(2) for k in 'abc'}
  task, kd = dot.gradient_masks(losses_fn, params)
  assert task == {'a': False, 'b': False, 'c': True}
  assert kd == {'a': True, 'b': True, 'c': False}


def test_gradient_masks_follow_what_each_loss_reaches():
  def losses_fn(p):
    hidden = jnp.tanh(p['shared'] * 2.0)
    ce = jnp.sum(hidden * p['task_only'])
    # Through a nested jit, stop_gradient and an integer: none of these
    # paths carries a gradient to 'detached' or 'indexed'.
    kd = jax.jit(lambda h, k: jnp.sum(h * k))(hidden, p['kd_only'])
    kd = kd + jnp.sum(jax.lax.stop_gradient(p['detached']))
    kd = kd + jnp.argmax(p['indexed']).astype(jnp.float32)
    return 0.3 * ce + kd, ce

  params = {k: jnp.ones(3) for k in
            ('shared', 'task_only', 'kd_only', 'detached', 'indexed')}
  task, kd = dot.gradient_masks(losses_fn, params)
  assert task == {'shared': True, 'task_only': True, 'kd_only': False,
                  'detached': False, 'indexed': False}
  assert kd == {'shared': True, 'task_only': False, 'kd_only': True,
                'detached': False, 'indexed': False}
  assert dot.count(task) == 2 and dot.count(kd) == 2


# --------------------------------------------------------------- the step


def _teacher():
  model = create_model('resnet14', num_classes=NUM_CLASSES, rngs=nnx.Rngs(7))
  return Teacher(model, None, name='resnet14')


def _batches(n):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n * BATCH, 32, 32, 3)).astype(np.float32)
  y = rng.integers(0, NUM_CLASSES, (n * BATCH,)).astype(np.int32)
  return [
    input_pipeline.Batch(x[i * BATCH:(i + 1) * BATCH],
                         y[i * BATCH:(i + 1) * BATCH],
                         np.arange(i * BATCH, (i + 1) * BATCH))
    for i in range(n)
  ]


def _kd_run(config, num_steps=2):
  mesh = parallel.create_mesh(1)
  method = distill.create_method(config)
  teacher = _teacher()
  state, graphdef, tx = train_state.create_train_state(
    config, method, teacher=teacher, data=DATA, mesh=mesh
  )
  t_graphdef, t_state = train_state.place_teacher(teacher, config, mesh)
  train_step = steps.create_train_step(
    method=method, graphdef=graphdef, teacher_graphdef=t_graphdef, tx=tx,
    data=DATA, compiler_options=steps.compiler_options(mesh),
  )
  for batch in _batches(num_steps):
    state, metrics = train_step(state, parallel.replicate(batch, mesh),
                                t_state)
  return jax.device_get(state), jax.device_get(metrics)


def _config(optimizer='sgd', delta=0.075):
  config = test_config.get_config()
  config.method = 'kd'
  config.batch_size = BATCH
  config.optimizer.name = optimizer
  config.optimizer.dot_delta = delta
  return config


@pytest.fixture(scope='module')
def sgd_run():
  return _kd_run(_config())


def test_dot_with_zero_delta_is_sgd_for_kd(sgd_run):
  """With delta 0 both momenta are SGD's, and every KD parameter gets both
  gradients: the two buffers then sum to SGD's buffer."""
  sgd_state, sgd_metrics = sgd_run
  dot_state, dot_metrics = _kd_run(_config('dot', 0.0))
  assert set(dot_metrics) == set(sgd_metrics)
  worst = 0.0
  for a, b in zip(jax.tree.leaves(dot_state.params),
                  jax.tree.leaves(sgd_state.params)):
    worst = max(worst, float(np.max(np.abs(a - b)) / np.max(np.abs(b))))
  assert worst <= 1e-5, worst
  assert isinstance(dot_state.opt_state, dot.DotState)


def test_dot_step_differs_from_sgd_and_logs_the_same_terms(sgd_run):
  sgd_state, sgd_metrics = sgd_run
  dot_state, dot_metrics = _kd_run(_config('dot', 0.075))
  assert set(dot_metrics) == set(sgd_metrics)
  for key in ('loss', 'ce', 'kd/logits'):
    assert np.isfinite(dot_metrics[key])
  # The first step is the same (each buffer is its gradient); the second
  # is not.
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
    jax.tree.leaves(dot_state.params), jax.tree.leaves(sgd_state.params)))
  assert moved > 1e-6


def test_sgd_step_is_unchanged_by_dot(sgd_run):
  """With DOT off the step is value_and_grad, the optax SGD chain and
  apply_updates, as before DOT existed: bit-identical to that, written out
  here."""
  config = _config()
  tx = train_state.create_optimizer(config, DATA.steps_per_epoch)
  assert not isinstance(tx.init({'w': jnp.zeros(1)}), dot.DotState)
  mesh = parallel.create_mesh(1)
  method = distill.create_method(config)
  teacher = _teacher()
  state, graphdef, _ = train_state.create_train_state(
    config, method, teacher=teacher, data=DATA, mesh=mesh
  )
  t_graphdef, t_state = train_state.place_teacher(teacher, config, mesh)
  reference_tx = optax.chain(
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(train_state.create_learning_rate_fn(config,
                                                  DATA.steps_per_epoch),
              momentum=config.momentum, nesterov=config.nesterov),
  )

  # The step of before DOT, as steps._student_update wrote it (metrics
  # included, so that XLA compiles the same program).
  @functools.partial(jax.jit, donate_argnums=0,
                     compiler_options=steps.compiler_options(mesh))
  def reference_step(state, batch, t_state):
    teacher_out = steps.teacher_forward(nnx.merge(t_graphdef, t_state),
                                        batch.images)
    context = distill.base.StepContext(
      step=state.step, epoch=state.step // DATA.steps_per_epoch,
      rng=train_state.method_rng(state.rng, state.step),
      num_train_examples=DATA.num_train_examples,
      steps_per_epoch=DATA.steps_per_epoch,
    )

    def loss_fn(params, buffers):
      trainable = nnx.merge(graphdef, params, buffers, copy=True)
      total, terms, logits = method.loss(trainable, teacher_out, batch,
                                         context)
      _, _, new_buffers = train_state.split_trainable(trainable)
      return total, (terms, logits, new_buffers)

    (total, (terms, logits, buffers)), grads = jax.value_and_grad(
      loss_fn, has_aux=True
    )(state.params, state.buffers)
    updates, opt_state = reference_tx.update(grads, state.opt_state,
                                             state.params)
    new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      buffers=buffers, opt_state=opt_state,
    )
    metrics = {'loss': total, **terms,
               'acc': losses.accuracy(logits, batch.labels)}
    return new_state, metrics

  for batch in _batches(2):
    state, _ = reference_step(state, parallel.replicate(batch, mesh),
                              t_state)
  want = jax.device_get(state)
  got, _ = sgd_run
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
