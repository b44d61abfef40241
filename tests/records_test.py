"""Workdir faults lose nothing: another config, damaged or foreign
checkpoints, a full disk, config changes that are allowed."""

import errno
import json
import os

import numpy as np
import pytest
from etils import epath

from mhkd_jax import train
from mhkd_jax.configs import test as test_config
from mhkd_jax.run import checkpoints, errors, platform, records


def _config(**overrides):
  config = test_config.get_config()
  config.method = 'ce'
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


@pytest.fixture(scope='module')
def finished(mock_cifar100, tmp_path_factory):
  """A finished run: (workdir, results); checkpoints at steps 6 and 8."""
  workdir = str(tmp_path_factory.mktemp('finished'))
  return workdir, train.train_and_evaluate(_config(), workdir)


def _copy(src, dst):
  import shutil  # noqa: PLC0415

  shutil.copytree(src, dst)
  return str(dst)


def _damage(step_dir):
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(os.urandom(64))


def _steps(workdir):
  return sorted(os.listdir(os.path.join(workdir, 'checkpoints')))


def test_a_run_records_its_config(finished):
  workdir, _ = finished
  saved = records.read_json(os.path.join(workdir, records.CONFIG))
  # The run records its resolved config: the platform's values, not 'auto'.
  assert saved == records.config_as_json(platform.resolve(_config()))
  assert saved['compute_dtype'] == 'float32'
  assert saved['students_loop'] == 'unroll'
  assert _steps(workdir) == ['6', '8']


def test_another_model_in_the_same_workdir_is_refused_naming_both(
  finished, mock_cifar100, tmp_path
):
  workdir = _copy(finished[0], tmp_path / 'run')
  with pytest.raises(errors.WorkdirError) as e:
    train.train_and_evaluate(_config(model='resnet14', learning_rate=0.1),
                             workdir)
  message = str(e.value)
  assert "config.model: 'resnet8' there, 'resnet14' now" in message
  assert 'config.learning_rate: 0.05 there, 0.1 now' in message
  assert 'fresh --workdir' in message


def test_extending_a_run_is_allowed_and_recorded(
  finished, mock_cifar100, tmp_path
):
  workdir = _copy(finished[0], tmp_path / 'run')
  results = train.train_and_evaluate(
    _config(num_epochs=3, log_every_steps=4), workdir
  )
  assert results['num_train_steps'] == 12
  assert [h['epoch'] for h in results['history']] == [1, 2, 3]
  with open(os.path.join(workdir, records.CONFIG_CHANGES)) as f:
    (record,) = [json.loads(line) for line in f]
  assert record['resumed_at_step'] == 8
  assert record['changes'] == {'log_every_steps': [2, 4],
                               'num_epochs': [2, 3]}


def test_checkpoints_of_another_network_are_refused_naming_the_arrays(
  finished, mock_cifar100, tmp_path
):
  # A workdir from before config.json was recorded: the checkpoint itself
  # says it holds another network.
  workdir = _copy(finished[0], tmp_path / 'run')
  os.remove(os.path.join(workdir, records.CONFIG))
  with pytest.raises(errors.WorkdirError,
                     match=r'step 8 .* holds another network.*only in this '
                     r'run: [^;]*student/layer1/1/'):
    train.train_and_evaluate(_config(model='resnet14'), workdir)
  assert _steps(workdir) == ['6', '8']  # nothing was touched


def test_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes(
  finished, mock_cifar100, tmp_path
):
  workdir = _copy(finished[0], tmp_path / 'run')
  os.remove(os.path.join(workdir, records.RESULTS))
  _damage(os.path.join(workdir, 'checkpoints', '8'))
  results = train.train_and_evaluate(_config(), workdir)
  # Resumed from step 6 and trained steps 7-8 again, to the same end.
  assert _steps(workdir) == ['6', '8', '8.unreadable']
  expected = finished[1]
  assert results['final'] == pytest.approx(expected['final'], abs=1e-6)
  assert results['train'] == pytest.approx(expected['train'], rel=1e-5)


def test_no_readable_checkpoint_stops_and_keeps_them_all(
  finished, mock_cifar100, tmp_path
):
  workdir = _copy(finished[0], tmp_path / 'run')
  for step in ('6', '8'):
    _damage(os.path.join(workdir, 'checkpoints', step))
  with pytest.raises(errors.WorkdirError) as e:
    train.train_and_evaluate(_config(), workdir)
  message = str(e.value)
  assert 'No checkpoint in' in message and 'step 8:' in message
  assert 'step 6:' in message and 'start again from step 0' in message
  assert _steps(workdir) == ['6', '8']  # never silently from step 0


@pytest.mark.slow
def test_a_full_disk_stops_naming_the_last_good_step_which_restores(
  finished, mock_cifar100, tmp_path, monkeypatch
):
  workdir = str(tmp_path / 'run')
  path_type = type(epath.Path(workdir))
  write_text = path_type.write_text

  def full_from_step_6(self, *args, **kwargs):
    if f'{os.sep}6.orbax-checkpoint-tmp' in str(self):
      raise OSError(errno.ENOSPC, 'No space left on device', str(self))
    return write_text(self, *args, **kwargs)

  monkeypatch.setattr(path_type, 'write_text', full_from_step_6)
  with pytest.raises(errors.CheckpointSaveError,
                     match=r'No space left on device.*The last good '
                     r'checkpoint is step 4, and it is intact'):
    train.train_and_evaluate(_config(), workdir)
  monkeypatch.undo()
  assert checkpoints.TrainCheckpointer(
    workdir, max_to_keep=2).latest_step() == 4
  results = train.train_and_evaluate(_config(), workdir)
  expected = finished[1]
  assert results['final'] == pytest.approx(expected['final'], abs=1e-6)
  assert np.isfinite(results['train']['loss'])


def test_sections_of_other_methods_do_not_block_a_resume(
  finished, mock_cifar100, tmp_path
):
  """A config.json from a version with other methods (or without some)
  still resumes: only the run's own method section is compared."""
  workdir = _copy(finished[0], tmp_path / 'run')
  path = os.path.join(workdir, records.CONFIG)
  saved = records.read_json(path)
  assert 'kd' not in saved and 'crd' not in saved  # a 'ce' run
  saved['retired_method'] = {'beta': 3.0}
  records.write_json(path, saved)
  os.remove(os.path.join(workdir, records.RESULTS))
  results = train.train_and_evaluate(_config(), workdir)
  assert results['final'] == pytest.approx(finished[1]['final'], abs=1e-6)
  assert not os.path.exists(os.path.join(workdir,
                                         records.CONFIG_CHANGES))


def test_keys_added_since_a_run_was_recorded_take_the_value_it_had():
  config = test_config.get_config()
  config.method = 'kd'
  now = records.config_as_json(config)
  before = json.loads(json.dumps(now))
  del before['kd']['logit_standardize']
  del before['data']['jpeg_draft_eval']
  assert records.config_changes(before, now) == {}
  # An old CRD run drew its negatives with replacement: the new default
  # is another experiment.
  config.method = 'crd'
  now = records.config_as_json(config)
  before = json.loads(json.dumps(now))
  del before['crd']['negatives_with_replacement']
  assert records.config_changes(before, now) == {
    'crd.negatives_with_replacement': [True, False]}
