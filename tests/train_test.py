"""train_and_evaluate end to end on mock CIFAR-100: results, resume, errors."""

import json
import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from mhkd_jax import train
from mhkd_jax.configs import test as test_config
from mhkd_jax.models import create_model
from mhkd_jax.run import checkpoints

NUM_CLASSES = 100  # mock cifar100


@pytest.fixture(scope='module')
def mock_cifar(mock_cifar100):
  yield


@pytest.fixture(scope='module')
def teacher_dir(resnet8_teacher_dir):
  return resnet8_teacher_dir


def _kill():
  raise KeyboardInterrupt('killed')


def _sigterm():
  os.kill(os.getpid(), signal.SIGTERM)


def _config(teacher_dir, method='mhkd'):
  config = test_config.get_config()
  config.method = method
  config.teacher.model = 'resnet8'
  config.teacher.init = teacher_dir
  config.mhkd.teacher_head_mode = 'online'
  return config


def _exported_params(workdir):
  teacher = checkpoints.load_teacher(workdir)
  return jax.tree.leaves(nnx.state(teacher.model, nnx.Param)) + (
    jax.tree.leaves(nnx.state(teacher.heads, nnx.Param))
  )


@pytest.fixture(scope='module')
def uninterrupted(mock_cifar, teacher_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  results = train.train_and_evaluate(_config(teacher_dir), workdir)
  return workdir, results


def test_writes_results_json_with_every_metric(uninterrupted):
  workdir, results = uninterrupted
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  assert saved['final'] == results['final']
  assert saved['num_train_steps'] == 8  # 64 examples / 16 x 2 epochs
  final = saved['final']
  for key in ('eval/acc', 'eval/acc/stage1', 'eval/acc/stage2',
              'eval/teacher_acc', 'eval/teacher_acc/stage1',
              'eval/agree_top1', 'eval/agree_top1/stage2', 'eval/loss'):
    assert key in final, key
    assert np.isfinite(final[key])
  assert 0.0 <= final['eval/acc'] <= 1.0
  assert [h['epoch'] for h in saved['history']] == [1, 2]
  for key in ('ce', 'kd/logits', 'kd/stage1', 'ce/teacher_head/stage2'):
    assert key in saved['train']


@pytest.mark.slow
def test_killed_and_restarted_equals_uninterrupted(
  uninterrupted, mock_cifar, teacher_dir, tmp_path, disrupt_train_step
):
  workdir = str(tmp_path)
  config = _config(teacher_dir)
  disrupt_train_step(at_call=6, action=_kill)  # after the step-4 checkpoint
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, workdir)
  assert checkpoints.TrainCheckpointer(
    workdir, max_to_keep=2).latest_step() == 4
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  disrupt_train_step.restore()
  resumed = train.train_and_evaluate(config, workdir)

  expected_dir, expected = uninterrupted
  assert resumed['final'] == pytest.approx(expected['final'], abs=1e-6)
  assert resumed['train'] == pytest.approx(expected['train'], rel=1e-5)
  for a, b in zip(_exported_params(workdir), _exported_params(expected_dir)):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_sigterm_saves_and_stops_then_a_new_run_is_not_stopped(
  uninterrupted, mock_cifar, teacher_dir, tmp_path, disrupt_train_step
):
  previous = signal.getsignal(signal.SIGTERM)
  disrupt_train_step(at_call=3, action=_sigterm)
  config = _config(teacher_dir)
  workdir = str(tmp_path)
  out = train.train_and_evaluate(config, workdir)
  assert out == {'preempted': True, 'step': 3}
  assert checkpoints.TrainCheckpointer(
    workdir, max_to_keep=2).latest_step() == 3
  # The run's handler is gone and its flag with it: the next run in this
  # process resumes at step 3 and finishes like an uninterrupted run.
  assert signal.getsignal(signal.SIGTERM) is previous
  disrupt_train_step.restore()
  resumed = train.train_and_evaluate(config, workdir)
  _, expected = uninterrupted
  assert resumed['final'] == pytest.approx(expected['final'], abs=1e-6)
  assert resumed['train'] == pytest.approx(expected['train'], rel=1e-5)


@pytest.mark.slow
def test_host_fed_input_trains_exactly_like_the_resident_one(
  uninterrupted, mock_cifar, teacher_dir, tmp_path
):
  """The input seam: batches sent from the host each step (each process
  its rows) give the run that device-resident batches give."""
  config = _config(teacher_dir)
  config.data.pipeline = 'host'
  workdir = str(tmp_path)
  results = train.train_and_evaluate(config, workdir)
  expected_dir, expected = uninterrupted
  assert results['final'] == pytest.approx(expected['final'], abs=1e-6)
  assert results['train'] == pytest.approx(expected['train'], rel=1e-6)
  for a, b in zip(_exported_params(workdir), _exported_params(expected_dir)):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_non_finite_loss_raises_and_keeps_last_good_checkpoint(
  mock_cifar, teacher_dir, tmp_path
):
  config = _config(teacher_dir, method='ce')
  config.learning_rate = 1e12
  config.log_every_steps = 1
  config.checkpoint.every_steps = 1
  with pytest.raises(train.NonFiniteLossError, match='learning_rate'):
    train.train_and_evaluate(config, str(tmp_path))
  latest = checkpoints.TrainCheckpointer(
    str(tmp_path), max_to_keep=2).latest_step()
  if latest is not None:  # whatever was saved is finite
    restored = checkpoints.TrainCheckpointer(
      str(tmp_path), max_to_keep=2)._manager.restore(latest)
    assert all(np.all(np.isfinite(x))
               for x in jax.tree.leaves(restored['params']))


@pytest.mark.slow
def test_bfloat16_compute_trains_like_float32_and_saves_float32(
  uninterrupted, teacher_dir, tmp_path
):
  reference_dir, reference = uninterrupted
  config = _config(teacher_dir)
  config.compute_dtype = 'bfloat16'
  workdir = str(tmp_path)
  results = train.train_and_evaluate(config, workdir)
  # Eight steps from the same init and data: bf16 rounding moves the
  # losses a little, not the run.
  for key in ('loss', 'ce', 'kd/logits'):
    assert results['train'][key] == pytest.approx(
      reference['train'][key], rel=0.05
    ), key
  exported = _exported_params(workdir)
  assert all(leaf.dtype == np.float32 for leaf in exported)
  # The run trained, and like the float32 one: its parameters moved from
  # the (seed-equal) initial ones, and stayed far closer to the float32
  # run's than they moved.
  init = create_model('resnet8', num_classes=NUM_CLASSES,
                      rngs=nnx.Rngs(config.seed))
  init = jax.tree.leaves(nnx.state(init, nnx.Param))
  f32 = _exported_params(reference_dir)[:len(init)]
  moved = sum(float(np.sum((w - i) ** 2)) for w, i in zip(f32, init))
  apart = sum(float(np.sum((b - w) ** 2)) for b, w in zip(exported, f32))
  assert moved > 0 and apart < 0.05 * moved


@pytest.mark.slow
def test_dot_run_killed_and_restarted_equals_uninterrupted(
  mock_cifar, teacher_dir, tmp_path, disrupt_train_step
):
  """DOT's two momentum buffers and its step count are saved and restored
  with the rest of the state."""
  config = _config(teacher_dir, method='kd')
  config.optimizer.name = 'dot'
  expected = train.train_and_evaluate(config, str(tmp_path / 'whole'))
  workdir = str(tmp_path / 'killed')
  disrupt_train_step(at_call=6, action=_kill)  # after the step-4 checkpoint
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, workdir)
  disrupt_train_step.restore()
  resumed = train.train_and_evaluate(config, workdir)
  assert resumed['final'] == pytest.approx(expected['final'], abs=1e-6)
  assert resumed['train'] == pytest.approx(expected['train'], rel=1e-5)
  params = [
    jax.tree.leaves(nnx.state(checkpoints.load_teacher(d).model, nnx.Param))
    for d in (workdir, str(tmp_path / 'whole'))
  ]
  assert params[0]
  for a, b in zip(*params):
    np.testing.assert_allclose(a, b, atol=1e-6)
