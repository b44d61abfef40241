"""mhkd_jax.run.metric_writers and periodic_actions: TensorBoard files that
TensorBoard reads, the log, and when each action fires."""

import logging as std_logging
import os

import pytest
from tensorboard.backend.event_processing import event_accumulator

from mhkd_jax.run import metric_writers, periodic_actions


def _read_events(logdir):
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return acc


def test_event_file_holds_the_scalars_and_hparams(tmp_path):
  writer = metric_writers.create_default_writer(str(tmp_path))
  writer.write_hparams({'learning_rate': 0.05, 'model': 'resnet8'})
  writer.write_scalars(4, {'train/loss': 2.5, 'train/lr': 0.05})
  writer.write_scalars(8, {'train/loss': 1.25, 'eval/acc': 0.5})
  writer.close()
  (name,) = os.listdir(tmp_path)
  assert name.startswith('events.out.tfevents.')
  acc = _read_events(tmp_path)
  assert [(e.step, e.value) for e in acc.Scalars('train/loss')] == [
    (4, 2.5), (8, 1.25)]
  assert [(e.step, e.value) for e in acc.Scalars('eval/acc')] == [(8, 0.5)]
  assert acc.Scalars('train/lr')[0].value == pytest.approx(0.05)
  # The HParams dashboard's summary.
  assert '_hparams_/session_start_info' in acc.Tags()['tensors']


def test_the_log_gets_every_scalar(tmp_path, caplog):
  writer = metric_writers.create_default_writer(str(tmp_path),
                                                just_logging=True)
  with caplog.at_level(std_logging.INFO, logger='absl'):
    writer.write_scalars(3, {'train/loss': 0.125, 'count': 7})
  writer.close()
  assert '[3] count=7, train/loss=0.125' in caplog.text
  assert os.listdir(tmp_path) == []  # just logging: no event file


def test_without_tensorboard_the_metrics_go_to_the_log(tmp_path, caplog,
                                                      monkeypatch):
  monkeypatch.setitem(__import__('sys').modules, 'tensorboard.compat.proto',
                      None)
  with caplog.at_level(std_logging.INFO, logger='absl'):
    writer = metric_writers.create_default_writer(str(tmp_path))
    writer.write_scalars(1, {'train/loss': 1.0})
  writer.close()
  assert len(writer.writers) == 1
  assert 'No TensorBoard event file' in caplog.text
  assert 'pip install tensorboard' in caplog.text
  assert '[1] train/loss=1' in caplog.text


def test_callback_fires_every_n_steps_and_on_the_last():
  fired = []
  action = periodic_actions.PeriodicCallback(
    every_steps=3, on_steps=[7],
    callback_fn=lambda step, t, state: fired.append((step, state)),
  )
  results = [action(step, t=0.0, state=f's{step}') for step in range(1, 8)]
  assert fired == [(3, 's3'), (6, 's6'), (7, 's7')]
  assert results == [False, False, True, False, False, True, True]


def test_callback_without_an_interval_fires_only_when_asked():
  fired = []
  action = periodic_actions.PeriodicCallback(
    every_steps=None, on_steps=[5], callback_fn=lambda step, t: fired.append(
      step))
  for step in range(1, 6):
    action(step, t=0.0)
  assert fired == [5]


class _Recorder:
  def __init__(self):
    self.scalars = []

  def write_scalars(self, step, scalars):
    self.scalars.append((step, scalars))


def test_report_progress_writes_steps_per_second(caplog):
  writer = _Recorder()
  report = periodic_actions.ReportProgress(num_train_steps=100,
                                           writer=writer, every_secs=10.0)
  with caplog.at_level(std_logging.INFO, logger='absl'):
    report(1, t=100.0)  # the first call: the clock starts, no report
    report(2, t=105.0)  # 5 s: not yet
    report(41, t=120.0)  # 40 steps in 20 s
    report(100, t=121.0)  # the last step: always
  assert [(s, round(v['steps_per_sec'], 6)) for s, v in writer.scalars] == [
    (41, 2.0), (100, 59.0)]
  assert all(v['uptime'] >= 0 for _, v in writer.scalars)
  assert '2.0 steps/s, 41.0% (41/100), ETA 0m30s' in caplog.text
