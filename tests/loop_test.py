"""The training loop's host side: the train metrics fetched once per log
interval, the logged learning rate computed on the host, checkpoints by
time as well as by steps."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mhkd_jax import parallel, train, train_state
from mhkd_jax.configs import test as test_config


class _Writer:
  """Keeps what the loop writes."""

  def __init__(self):
    self.scalars = {}

  def write_scalars(self, step, scalars):
    self.scalars[step] = dict(scalars)


def _lr_config(num_epochs=240, fractions=(0.625, 0.75, 0.875)):
  return ml_collections.ConfigDict(
    {'num_epochs': num_epochs, 'lr_decay_fractions': fractions,
     'learning_rate': 0.05, 'lr_decay_rate': 0.1}
  )


def _device_metrics(rng, num_steps, shape=()):
  """Per-step metrics as the train step returns them: replicated device
  scalars (or [N] arrays for N students), and their host values."""
  mesh = parallel.create_mesh()
  host = [
    {'loss': rng.standard_normal(shape).astype(np.float32) + 3,
     'kd/logits': rng.standard_normal(shape).astype(np.float32),
     'acc': rng.uniform(size=shape).astype(np.float32)}
    for _ in range(num_steps)
  ]
  return [parallel.replicate(m, mesh) for m in host], host


@pytest.mark.parametrize('shape', [(), (3,)], ids=['one', 'students'])
def test_logged_means_equal_a_direct_computation(shape):
  rng = np.random.default_rng(0)
  metrics, host = _device_metrics(rng, 7, shape)
  writer = _Writer()
  lr = train_state.create_host_learning_rate_fn(_lr_config(), 3)
  logged = train.TrainMetrics(writer, lr, checkpointer=None)
  for m in metrics:
    logged.add(m)
  logged.write(7)
  for key in host[0]:
    direct = np.mean(np.stack([m[key] for m in host]), axis=0)
    if shape:
      assert logged.last[key] == float(direct.astype(np.float64).mean())
      for k in range(shape[0]):
        assert writer.scalars[7][f'student{k}/train/{key}'] == float(
          direct[k])
    else:
      assert logged.last[key] == float(direct)
      assert writer.scalars[7][f'train/{key}'] == float(direct)
  assert writer.scalars[7]['train/lr'] == float(np.float32(0.05))


def test_an_interval_is_fetched_in_one_transfer(monkeypatch):
  metrics, _ = _device_metrics(np.random.default_rng(1), 5)
  fetched = []
  device_get = jax.device_get

  def counting(tree):
    fetched.append(tree)
    return device_get(tree)

  monkeypatch.setattr(jax, 'device_get', counting)
  logged = train.TrainMetrics(
    _Writer(), train_state.create_host_learning_rate_fn(_lr_config(), 3),
    checkpointer=None,
  )
  for m in metrics:
    logged.add(m)
  logged.write(5)
  assert len(fetched) == 1
  # One pytree of stacked [5] arrays, not 5 x 3 scalars.
  leaves = jax.tree.leaves(fetched[0])
  assert len(leaves) == 3 and all(x.shape == (5,) for x in leaves)


@pytest.mark.parametrize('num_epochs,fractions', [
  (240, (0.625, 0.75, 0.875)),
  (2, (0.625, 0.75, 0.875)),  # two boundaries round to the same epoch
  (10, (0.5,)),
  (4, ()),
])
def test_host_learning_rate_is_the_schedule_to_the_bit(num_epochs,
                                                       fractions):
  config = _lr_config(num_epochs, fractions)
  steps_per_epoch = 3
  schedule = train_state.create_learning_rate_fn(config, steps_per_epoch)
  host = train_state.create_host_learning_rate_fn(config, steps_per_epoch)
  every_step = jax.jit(jax.vmap(schedule))(
    jnp.arange(num_epochs * steps_per_epoch + 2))
  for step in range(num_epochs * steps_per_epoch + 2):
    assert host(step) == float(schedule(step))
    assert host(step) == float(every_step[step])


class _FakeClock:
  """Seconds that advance by ``tick`` at every reading."""

  def __init__(self, tick):
    self.now, self.tick, self.readings = 0.0, tick, 0

  def __call__(self):
    self.readings += 1
    self.now += self.tick
    return self.now


def _schedule(clock, every_minutes=1.0, agree=None, agree_every=5):
  return train.CheckpointSchedule(
    every_steps=100, every_minutes=every_minutes, last_step=50,
    agree_every=agree_every, clock=clock, agree=agree,
  )


def _saved_steps(schedule, steps):
  saved = []
  for step in steps:
    if schedule.due(step):
      saved.append(step)
      schedule.saved()
  return saved


def test_checkpoints_by_time_as_well_as_by_steps():
  # 25 s per clock reading, a save every minute: every third step (the
  # reading after a save restarts the count), and the last step.
  clock = _FakeClock(25.0)
  assert _saved_steps(_schedule(clock), range(1, 11)) == [3, 6, 9]
  clock = _FakeClock(25.0)
  assert _saved_steps(_schedule(clock), range(95, 101)) == [97, 100]
  assert _saved_steps(_schedule(_FakeClock(1.0)), [49, 50]) == [50]


def test_every_minutes_zero_saves_by_steps_and_never_reads_the_clock():
  clock = _FakeClock(1e6)
  schedule = _schedule(clock, every_minutes=0)
  readings = clock.readings  # the one at construction
  assert _saved_steps(schedule, range(1, 201)) == [50, 100, 200]
  assert clock.readings == readings + 3  # one per save, none per step


def test_several_processes_agree_at_log_steps_on_process_0s_clock():
  asked = []

  def agree(flag):  # process 0 says no the first time, then yes
    asked.append(flag)
    return len(asked) > 1

  clock = _FakeClock(100.0)
  saved = _saved_steps(_schedule(clock, agree=agree, agree_every=5),
                       range(1, 16))
  # Asked only at multiples of agree_every; saved when process 0 agrees.
  assert asked == [True, True, True]
  assert saved == [10, 15]


def test_a_run_saves_by_the_clock(mock_cifar100, tmp_path, monkeypatch):
  del mock_cifar100
  config = test_config.get_config()
  config.method = 'ce'
  config.checkpoint.every_steps = 1000  # 8 steps: by time only (and last)
  config.checkpoint.every_minutes = 1.0
  config.checkpoint.max_to_keep = 10
  monkeypatch.setattr(train, '_clock', _FakeClock(25.0))
  train.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints'), key=int) == [
    '3', '6', '8']
